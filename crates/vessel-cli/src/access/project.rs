//! `vessel project ...`: projects and their quotas.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::{CreateProjectRequest, Quota};

use crate::{output, CliError, Context};

/// `vessel project <verb>`
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// List projects with their usage and limits.
    #[command(visible_alias = "ls")]
    List,
    /// Show a project's usage against its limits.
    Show(ProjectNameArgs),
    /// Create a project, optionally with limits.
    #[command(
        after_help = "Examples:\n  vessel project create dev --vms 10 --vcpus 16 --memory 32G"
    )]
    Create(ProjectCreateArgs),
    /// Set a project's limits (the ones not given become unlimited).
    #[command(after_help = "Examples:\n  vessel project quota dev --vms 20 --vcpus 32")]
    Quota(ProjectCreateArgs),
    /// Delete a project that has no VMs (`default` stays).
    #[command(visible_alias = "rm")]
    Delete(ProjectNameArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ProjectNameArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct ProjectCreateArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Most VMs.
    #[arg(long, value_name = "N")]
    pub vms: Option<u64>,
    /// Most vCPUs over all VMs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u64>,
    /// Most memory over all VMs (e.g. 32G; a bare number is MiB).
    #[arg(long, value_name = "SIZE", value_parser = vessel_core::parse_memory_mib)]
    pub memory: Option<u64>,
    /// Most disk over all volumes and images of the project, by virtual (provisioned) size
    /// (e.g. 500G).
    #[arg(long, value_name = "SIZE", value_parser = vessel_core::units::parse_size_bytes)]
    pub disk: Option<u64>,
    /// Most networks.
    #[arg(long, value_name = "N")]
    pub networks: Option<u64>,
}

impl ProjectCreateArgs {
    fn quota(&self) -> Quota {
        Quota {
            vms: self.vms,
            vcpus: self.vcpus,
            memory_mib: self.memory,
            disk_bytes: self.disk,
            networks: self.networks,
        }
    }
}

pub(crate) async fn run_project(
    command: ProjectCommand,
    ctx: &Context,
) -> Result<ExitCode, CliError> {
    match command {
        ProjectCommand::List => {
            let projects = ctx.client.list_projects().await?;
            ctx.show(&projects, |p| project_table(p))?;
        }
        ProjectCommand::Show(args) => {
            let project = ctx.client.get_project(&args.name).await?;
            ctx.show(&project, |p| project_table(std::slice::from_ref(p)))?;
        }
        ProjectCommand::Create(args) => {
            let req = CreateProjectRequest {
                name: args.name.clone(),
                quota: args.quota(),
            };
            let project = ctx.client.create_project(&req).await?;
            ctx.show(&project, |p| format!("project {} created\n", p.name))?;
        }
        ProjectCommand::Quota(args) => {
            let project = ctx.client.set_quota(&args.name, &args.quota()).await?;
            ctx.show(&project, |p| project_table(std::slice::from_ref(p)))?;
        }
        ProjectCommand::Delete(args) => {
            ctx.client.delete_project(&args.name).await?;
            ctx.print(&format!("project {} deleted\n", args.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn limit(value: Option<u64>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

/// `vessel project list` and `show`: usage against limits.
fn project_table(projects: &[vessel_api::Project]) -> String {
    let mut table = output::plain_table(Some(&[
        "NAME",
        "VMS",
        "VCPUS",
        "MEMORY MIB",
        "DISK",
        "NETWORKS",
    ]));
    for p in projects {
        let (q, u) = (&p.quota, &p.usage);
        table.add_row(vec![
            p.name.clone(),
            format!("{}/{}", u.vms, limit(q.vms)),
            format!("{}/{}", u.vcpus, limit(q.vcpus)),
            format!("{}/{}", u.memory_mib, limit(q.memory_mib)),
            format!(
                "{}/{}",
                vessel_core::units::format_size_bytes(u.disk_bytes),
                q.disk_bytes
                    .map_or("-".into(), vessel_core::units::format_size_bytes)
            ),
            format!("{}/{}", u.networks, limit(q.networks)),
        ]);
    }
    format!("{}(used/limit; - is unlimited)\n", output::render(&table))
}
