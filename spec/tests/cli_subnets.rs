//! `skein subnet create|list|show|delete` and `skein vm create --subnet`
//! against the real binary: changes refused from a script without `--yes`
//! and audited with it, ranges held to the API's rules, a subnet with live
//! VMs kept, and a deleted subnet's name free again.

use skein_spec::cli::Cli;
use skein_spec::api::PUBLIC_KEY;

#[tokio::test]
async fn subnets_are_made_joined_shown_and_deleted_from_the_command_line() {
    let c = Cli::new("subnets").await;
    c.ok(&["project", "create", "acme"]);
    let create = ["subnet", "create", "backend", "--project", "acme", "--cidr", "10.9.0.0/24"];
    assert!(c.refused(&create).contains("pass --yes to confirm"));
    assert_eq!(c.i64("SELECT count(*) FROM private_subnet").await, 0, "an unconfirmed change writes nothing");

    let made = c.ok(&create);
    let id = made["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ps"), "{made}");
    assert!(c.refused(&[&create[..], &["--yes"]].concat()).contains("a subnet with that name exists in this project already"));
    let said = c.refused(&["subnet", "create", "other", "--project", "acme", "--cidr", "10.0.0.5/24", "--yes"]);
    assert!(said.contains("--cidr must start at its network address: 10.0.0.0/24"), "{said}");
    let said = c.refused(&["subnet", "create", "other", "--project", "acme", "--cidr", "8.8.8.0/24", "--yes"]);
    assert!(said.contains("--cidr must be inside a private range"), "{said}");

    // VMs join it by name and by id, each with the next address.
    let vm = |name: &str, subnet: &str| c.ok(&["vm", "create", "--project", "acme", "--name", name, "--public-key", PUBLIC_KEY, "--subnet", subnet]);
    let db_vm = vm("db", "backend")["id"].as_str().unwrap().to_string();
    vm("app", &id);
    assert!(c.refused(&["vm", "create", "--project", "acme", "--name", "x", "--public-key", PUBLIC_KEY, "--subnet", "nowhere", "--yes"])
        .contains("nowhere is not a private subnet of this project"));

    let listed = c.ok(&["subnet", "list", "--project", "acme"]);
    let subnets = listed["subnets"].as_array().unwrap();
    assert_eq!((subnets.len(), subnets[0]["id"].as_str(), subnets[0]["cidr"].as_str()), (1, Some(id.as_str()), Some("10.9.0.0/24")));
    for shown in [c.ok(&["subnet", "show", &id]), c.ok(&["subnet", "show", "backend", "--project", "acme"])] {
        let vms: Vec<(&str, &str)> = shown["vms"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v["private_ip"].as_str().unwrap())).collect();
        assert_eq!(vms, [("db", "10.9.0.2/24"), ("app", "10.9.0.3/24")], "{shown}");
    }
    let text = String::from_utf8_lossy(&c.run(&["subnet", "show", &id]).stdout).to_string();
    assert!(text.contains("10.9.0.2/24") && text.contains("db") && text.contains("2 VMs"), "{text}");
    assert!(c.refused(&["subnet", "show", "backend"]).contains("add --project"));

    // Kept while its VMs live; deleted (confirmed) once they are destroyed.
    assert!(c.refused(&["subnet", "delete", &id, "--yes"]).contains("has 2 VMs that are not destroyed"));
    c.ok(&["vm", "destroy", &db_vm]);
    sqlx::query("UPDATE vm SET desired_state = 'destroyed' WHERE name = 'app'").execute(&c.db.pool).await.unwrap();
    assert!(c.refused(&["subnet", "delete", &id]).contains("pass --yes to confirm"));
    c.ok(&["subnet", "delete", "backend", "--project", "acme"]);
    assert!(c.refused(&["subnet", "show", &id]).contains("no live subnet"));
    assert_eq!(c.ok(&["subnet", "list", "--project", "acme"])["subnets"].as_array().unwrap().len(), 0);
    let again = c.ok(&create);
    assert_ne!(again["id"].as_str(), Some(id.as_str()), "the name is free again, for a new subnet");

    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM operator_audit WHERE action LIKE 'subnet-%' ORDER BY created_at, id")
        .fetch_all(&c.db.pool)
        .await
        .unwrap();
    assert_eq!(actions, ["subnet-create", "subnet-delete", "subnet-create"]);
}
