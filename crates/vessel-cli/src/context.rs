//! What every command gets: the client of the chosen daemon, and how to print its answer.

use std::io::{self, Write};

use serde::Serialize;
use vessel_api::Accepted;

use crate::client::{Client, Outcome};
use crate::output::{self, OutputFormat};
use crate::CliError;

/// What a command needs: the client and how to print.
pub(crate) struct Context {
    pub client: Client,
    pub output: OutputFormat,
}

impl Context {
    /// Writes to stdout. A closed pipe (`vessel vm list | head -1`) is not an error.
    pub fn print(&self, text: &str) -> Result<(), CliError> {
        let mut stdout = io::stdout().lock();
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
                Err(CliError::io("cannot write to standard output", err))
            }
            _ => Ok(()),
        }
    }

    /// Prints a value as JSON, or as the given table text.
    pub fn show<T: Serialize + ?Sized>(
        &self,
        value: &T,
        table: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        match self.output {
            OutputFormat::Json => self.print(&output::json(value)),
            OutputFormat::Table => self.print(&table(value)),
        }
    }

    /// Prints the outcome of a mutating request: the operation id when it was only accepted
    /// (`--no-wait`), otherwise what `done` says about the result.
    pub fn show_outcome<T: Serialize>(
        &self,
        outcome: &Outcome<T>,
        done: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        match outcome {
            Outcome::Accepted(accepted) => self.show_accepted(accepted),
            Outcome::Done(value) => self.show(value, done),
        }
    }

    /// Prints the operation a request started without waiting for it.
    pub fn show_accepted(&self, accepted: &Accepted) -> Result<(), CliError> {
        self.show(accepted, |accepted| {
            format!("operation {} started\n", accepted.operation.id)
        })
    }
}
