//! Batch-job master failover, the classic scenario.
//!
//! ```sh
//! ZKQ_ZK=127.0.0.1:2181 cargo run -p zkq-examples --example failover
//! ```
//!
//! Three processes (this program, run as `failover candidate N`) compete to be the master of
//! the batch job `nightly-report`. The master works in steps, and every step is a write guarded
//! by its fencing token (`check(epoch_path, token)` in the same `multi`). This program freezes
//! the master with SIGSTOP for longer than its 2 s session timeout: ZooKeeper expires the
//! session, a standby is elected with a higher token and carries on. Then the old master is
//! resumed. It does not know yet that it was replaced, and tries its next step: ZooKeeper
//! refuses it, the old master learns it is no longer master, and it never acts again (it joins
//! the line as a standby).
//!
//! To run a shell command this way, with a watchdog that stops it even while the runner is
//! frozen, use `zkq-worker singleton --name NAME -- COMMAND`.

use std::process::{Child, Command};
use std::time::Duration;

use zkq::zookeeper_client as zk;
use zkq::{Layout, ZkConfig};

const ROOT: &str = "/zkq-failover";
const BATCH: &str = "nightly-report";

fn zk_config() -> ZkConfig {
    ZkConfig {
        session_timeout: Duration::from_secs(2),
        ..ZkConfig::new(std::env::var("ZKQ_ZK").unwrap_or_else(|_| "127.0.0.1:2181".into()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("candidate") => candidate(args.get(2).cloned().unwrap_or_default()).await,
        _ => orchestrate().await,
    }
}

/// One competitor: campaign, work in guarded steps while master, campaign again when not.
async fn candidate(name: String) -> Result<(), Box<dyn std::error::Error>> {
    let layout = Layout::new(ROOT)?;
    loop {
        let client = zk_config().connect().await?;
        let election = zkq::singleton::election(client.clone(), &layout, BATCH, &name)?;
        loop {
            let leadership = match election.campaign().await {
                Ok(l) => l,
                Err(e) if e.is_session_lost() => break,
                Err(e) => return Err(e.into()),
            };
            let token = leadership.epoch();
            println!("{name}: master, fencing token {token}");
            for step in 1.. {
                tokio::select! {
                    _ = leadership.lost().cancelled() => {
                        println!("{name}: mastership in doubt; stopping");
                        break;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
                // One step of the batch, guarded by the token: it lands only while this
                // process is still the master.
                let mut multi = client.new_multi_writer();
                multi.add_check_version(leadership.epoch_path(), token)?;
                multi.add_create(
                    &format!("{ROOT}/steps/s-"),
                    format!("{token} {name} {step}").as_bytes(),
                    &zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all()),
                )?;
                match multi.commit().await {
                    Ok(_) => println!("{name}: step {step} written with token {token}"),
                    Err(e) => {
                        println!(
                            "{name}: step {step} did not land ({}): no longer master, never acting again",
                            zk::Error::from(e)
                        );
                        leadership.lost().cancel();
                        break;
                    }
                }
            }
        }
        println!("{name}: session expired; joining again with a new session");
    }
}

/// Starts three candidates, freezes the master past its session timeout, resumes it, and checks
/// that no step of a deposed master landed.
async fn orchestrate() -> Result<(), Box<dyn std::error::Error>> {
    let client = zk_config().connect().await?;
    // A clean slate for the example's own znodes.
    delete_tree(&client, ROOT).await;
    client
        .create(
            ROOT,
            b"",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await?;
    client
        .create(
            &format!("{ROOT}/steps"),
            b"",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await?;
    let exe = std::env::current_exe()?;
    let mut children: Vec<(String, Child)> = (0..3)
        .map(|i| {
            let name = format!("candidate-{i}");
            let child = Command::new(&exe)
                .args(["candidate", &name])
                .spawn()
                .expect("candidate starts");
            (name, child)
        })
        .collect();
    let epoch_path = format!("{ROOT}/singletons/{BATCH}/epoch");
    let master = wait_for_master(&client, &epoch_path, None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (name, epoch) = master;
    let pid = children
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c.id())
        .unwrap();
    println!("== freezing {name} (token {epoch}) with SIGSTOP, past its 2 s session timeout");
    signal(pid, libc::SIGSTOP);
    let (successor, new_epoch) = wait_for_master(&client, &epoch_path, Some(epoch)).await;
    println!("== {successor} took over with token {new_epoch}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("== resuming {name}");
    signal(pid, libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(3)).await;

    for (_, child) in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The steps in commit order: the token must never go down.
    let mut steps = client.list_children(&format!("{ROOT}/steps")).await?;
    steps.sort();
    let mut last = 0;
    for step in &steps {
        let (data, _) = client.get_data(&format!("{ROOT}/steps/{step}")).await?;
        let text = String::from_utf8_lossy(&data).into_owned();
        let token: i32 = text.split(' ').next().unwrap_or("0").parse()?;
        if token < last {
            return Err(format!("a deposed master's step landed: {text}").into());
        }
        last = token;
    }
    println!(
        "== OK: {} steps, tokens never went down; {name} wrote nothing after it was replaced",
        steps.len()
    );
    Ok(())
}

/// Waits until the epoch znode names a master (with an epoch newer than `after`).
async fn wait_for_master(client: &zk::Client, epoch_path: &str, after: Option<i32>) -> (String, i32) {
    loop {
        if let Ok((data, stat)) = client.get_data(epoch_path).await {
            if stat.version > after.unwrap_or(0) {
                return (String::from_utf8_lossy(&data).into_owned(), stat.version);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delete_tree(client: &zk::Client, path: &str) {
    if let Ok(children) = client.list_children(path).await {
        for child in children {
            Box::pin(delete_tree(client, &format!("{path}/{child}"))).await;
        }
    }
    let _ = client.delete(path, None).await;
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process this program started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}
