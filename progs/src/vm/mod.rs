//! The VM family: `Vm::Nexus`, a VM's lifecycle on a host, creating one, and
//! reading its console ([`console`]).

pub mod console;
pub mod nexus;
pub mod waiting;

use skein_models::capacity;
use skein_models::vm::{self, NewVm};
use skein_models::{Ubid, UbidType};
use sqlx::PgConnection;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("project {0} has used up its VM quota")]
    QuotaExceeded(Ubid),
    #[error("{0} is not a private subnet of this project")]
    NoSuchSubnet(String),
    #[error("subnet {0} has no free address left")]
    SubnetFull(Ubid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// What a VM is asked to be.
pub struct Spec<'a> {
    pub name: &'a str,
    pub cores: i32,
    pub memory_mib: i32,
    pub disk_mib: i32,
    pub public_key: &'a str,
    /// A live private subnet of the project to join, by id (`ps...`) or name.
    pub subnet: Option<&'a str>,
}

/// Create a VM: take quota, write its row and start its strand, all in the
/// caller's transaction (all or nothing). Placing it on a host is the
/// strand's first step, so this returns at once.
pub async fn create(conn: &mut PgConnection, project: Ubid, spec: &Spec<'_>, frame: nexus::Frame) -> Result<Ubid, CreateError> {
    create_by(conn, project, spec, frame, "user", &serde_json::json!({})).await
}

/// [`create`], naming who asked: `actor` and the fields of `by` (an object,
/// e.g. the API token's id and name) go on the `created` event.
pub async fn create_by(
    conn: &mut PgConnection,
    project: Ubid,
    spec: &Spec<'_>,
    frame: nexus::Frame,
    actor: &str,
    by: &serde_json::Value,
) -> Result<Ubid, CreateError> {
    if !capacity::take_quota(conn, project.uuid()).await? {
        return Err(CreateError::QuotaExceeded(project));
    }
    let id = Ubid::generate(UbidType::Vm);
    let new = NewVm {
        id: id.uuid(),
        project_id: project.uuid(),
        name: spec.name,
        cores: spec.cores,
        memory_mib: spec.memory_mib,
        disk_mib: spec.disk_mib,
        public_key: spec.public_key,
    };
    vm::insert(conn, &new).await?;
    if let Some(reference) = spec.subnet {
        // An id names only that subnet; anything else is a name.
        let by_id = Ubid::parse_as(reference, UbidType::Subnet).ok().map(|u| u.uuid());
        let subnet = skein_models::subnet::lock_live(conn, project.uuid(), by_id, reference)
            .await?
            .ok_or_else(|| CreateError::NoSuchSubnet(reference.to_string()))?;
        let ip = skein_models::subnet::allocate_ip(conn, subnet).await?.ok_or(CreateError::SubnetFull(Ubid::from_uuid(subnet)))?;
        skein_models::subnet::assign(conn, id.uuid(), subnet, &ip).await?;
    }
    let mut detail = serde_json::json!({"name": spec.name, "cores": spec.cores, "memory_mib": spec.memory_mib});
    if let (Some(d), Some(by)) = (detail.as_object_mut(), by.as_object()) {
        d.extend(by.clone());
    }
    skein_models::event::record(conn, id.uuid(), "created", actor, &detail).await?;
    skein_engine::enqueue::start_for(conn, id, frame, nexus::Label::Start).await?;
    Ok(id)
}

pub fn registry() -> skein_engine::Registry {
    skein_engine::Registry::new().with::<nexus::Nexus>()
}
