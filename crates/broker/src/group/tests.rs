//! Tests of the group state machine: text scenarios (events at given times → the effects they
//! produce, rendered one per line) and focused checks of codes, bounds and protocol choice.

use bytes::Bytes;

use super::*;

/// Drives one group from a script. Member ids come from a counter, so that runs are repeatable.
struct Harness {
    group: Group,
    next_member: u32,
}

impl Harness {
    fn new(config: GroupConfig) -> Harness {
        Harness { group: Group::new("g".to_owned(), config), next_member: 0 }
    }

    /// Runs one script line `@<now_ms> <verb> key=value...` and returns what it produced.
    fn step(&mut self, line: &str) -> Result<Vec<Effect>, GroupError> {
        let mut words = line.split_whitespace();
        let now_ms: i64 = words.next().and_then(|t| t.strip_prefix('@')).unwrap().parse().unwrap();
        let verb = words.next().unwrap();
        let mut args = std::collections::BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            args.insert(k, v);
        }
        let arg = |k: &str| args.get(k).copied();
        let to = ReplyTo(arg("r").map_or(0, |r| r.parse().unwrap()));
        let instance = arg("instance").map(str::to_owned);
        let gen = || arg("gen").unwrap().parse().unwrap();
        match verb {
            "join" => {
                let protocols = arg("protocols")
                    .unwrap_or("range:sub")
                    .split(',')
                    .map(|p| {
                        let (name, meta) = p.split_once(':').unwrap_or((p, ""));
                        Protocol {
                            name: name.to_owned(),
                            metadata: Bytes::copy_from_slice(meta.as_bytes()),
                        }
                    })
                    .collect();
                let req = JoinRequest {
                    member_id: arg("member").unwrap_or("").to_owned(),
                    group_instance_id: instance,
                    client_id: arg("client").unwrap_or("c").to_owned(),
                    client_host: "/127.0.0.1".to_owned(),
                    session_timeout_ms: arg("session").map_or(10_000, |s| s.parse().unwrap()),
                    rebalance_timeout_ms: arg("rebalance").map_or(30_000, |s| s.parse().unwrap()),
                    protocol_type: arg("type").unwrap_or("consumer").to_owned(),
                    protocols,
                    require_known_member_id: args.contains_key("v4"),
                };
                let next = &mut self.next_member;
                let mut ids = |prefix: &str| {
                    *next += 1;
                    format!("{prefix}-{next}")
                };
                Ok(self.group.join(to, req, now_ms, &mut ids))
            }
            "sync" => {
                let assignments = arg("assign")
                    .map(|a| {
                        a.split(',')
                            .map(|kv| {
                                let (m, v) = kv.split_once(':').unwrap();
                                (m.to_owned(), Bytes::copy_from_slice(v.as_bytes()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let req = SyncRequest {
                    member_id: arg("member").unwrap().to_owned(),
                    group_instance_id: instance,
                    generation_id: gen(),
                    protocol_type: arg("type").map(str::to_owned),
                    protocol_name: arg("protocol").map(str::to_owned),
                    assignments,
                };
                Ok(self.group.sync(to, req, now_ms))
            }
            "heartbeat" => {
                let member = arg("member").unwrap();
                Ok(self.group.heartbeat(to, member, instance.as_deref(), gen(), now_ms))
            }
            "leave" => {
                let leaving = arg("members")
                    .unwrap()
                    .split(',')
                    .map(|m| match m.split_once('/') {
                        Some((id, i)) => (id.to_owned(), Some(i.to_owned())),
                        None => (m.to_owned(), None),
                    })
                    .collect();
                Ok(self.group.leave(to, leaving, now_ms))
            }
            "tick" => Ok(self.group.tick(now_ms)),
            "persisted" => {
                let result = if args.contains_key("fail") {
                    Err(GroupError::CoordinatorNotAvailable)
                } else {
                    Ok(())
                };
                Ok(self.group.persisted(gen(), result))
            }
            "delete" => self.group.delete(),
            other => panic!("unknown verb {other}"),
        }
    }

    fn render_state(&self) -> String {
        let g = &self.group;
        let members: Vec<&str> = g.member_ids().collect();
        format!(
            "  = {:?} gen={} leader={} protocol={} members=[{}]",
            g.state(),
            g.generation_id(),
            g.leader().unwrap_or("-"),
            g.protocol_name().unwrap_or("-"),
            members.join(",")
        )
    }
}

fn error(e: Option<GroupError>) -> String {
    e.map_or("ok".to_owned(), |e| format!("{e:?}({})", crate::errors::code_of(Some(e))))
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn render(effect: &Effect) -> String {
    match effect {
        Effect::Join { to, response: r } => {
            let mut s = format!("  r{} join {} member={}", to.0, error(r.error), r.member_id);
            if r.error.is_none() {
                s += &format!(
                    " gen={} leader={} protocol={}",
                    r.generation_id,
                    r.leader,
                    r.protocol_name.as_deref().unwrap_or("-")
                );
            }
            if !r.members.is_empty() {
                let ms: Vec<String> = r
                    .members
                    .iter()
                    .map(|m| match &m.group_instance_id {
                        Some(i) => format!("{}/{}:{}", m.member_id, i, text(&m.metadata)),
                        None => format!("{}:{}", m.member_id, text(&m.metadata)),
                    })
                    .collect();
                s += &format!(" members=[{}]", ms.join(","));
            }
            if r.skip_assignment {
                s += " skip_assignment";
            }
            s
        }
        Effect::Sync { to, response: r } => match r.error {
            None => format!("  r{} sync ok assignment={}", to.0, text(&r.assignment)),
            Some(_) => format!("  r{} sync {}", to.0, error(r.error)),
        },
        Effect::Heartbeat { to, error: e } => format!("  r{} heartbeat {}", to.0, error(*e)),
        Effect::Leave { to, error: e, members } => {
            let ms: Vec<String> = members
                .iter()
                .map(|m| {
                    let instance = m.group_instance_id.as_deref().unwrap_or("-");
                    format!("{}/{} {}", m.member_id, instance, error(m.error))
                })
                .collect();
            format!("  r{} leave {} [{}]", to.0, error(*e), ms.join(", "))
        }
        Effect::PersistGroup(r) => {
            let ms: Vec<String> = r
                .members
                .iter()
                .map(|m| format!("{}={}", m.member_id, text(&m.assignment)))
                .collect();
            format!(
                "  persist gen={} leader={} protocol={} members=[{}]",
                r.generation_id,
                r.leader.as_deref().unwrap_or("-"),
                r.protocol_name.as_deref().unwrap_or("-"),
                ms.join(",")
            )
        }
        Effect::DeleteGroup { group_id } => format!("  tombstone {group_id}"),
    }
}

/// Runs a script and renders every line, the effects it produced and the group afterwards.
/// Checks on the way that every request is answered exactly once, never twice or unasked.
fn run(config: GroupConfig, script: &str) -> String {
    let mut h = Harness::new(config);
    let mut out = String::new();
    let mut unanswered = std::collections::BTreeSet::new();
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        out += &format!("{line}\n");
        if let Some(r) = line.split_whitespace().find_map(|w| w.strip_prefix("r=")) {
            assert!(unanswered.insert(r.parse::<u64>().unwrap()), "request r={r} reused");
        }
        let effects = match h.step(line) {
            Ok(effects) => effects,
            Err(e) => {
                out += &format!("  refused {}\n", error(Some(e)));
                Vec::new()
            }
        };
        for e in effects {
            let to = match &e {
                Effect::Join { to, .. }
                | Effect::Sync { to, .. }
                | Effect::Heartbeat { to, .. }
                | Effect::Leave { to, .. } => Some(to.0),
                Effect::PersistGroup(_) | Effect::DeleteGroup { .. } => None,
            };
            if let Some(to) = to {
                assert!(unanswered.remove(&to), "r{to} answered twice or never asked");
            }
            out += &render(&e);
            out += "\n";
        }
        out += &h.render_state();
        out += "\n";
    }
    out
}

/// Compares a scenario's rendering with the expected text (leading indentation of the literal
/// stripped). On a mismatch it prints the actual rendering in full, ready to paste.
#[track_caller]
fn check(config: GroupConfig, script: &str, expected: &str) {
    let actual = run(config, script);
    let expected: String = expected
        .lines()
        .map(|l| l.strip_prefix("        ").unwrap_or(l.trim_start()))
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        actual == expected,
        "scenario output differs; actual:\n{actual}\nexpected:\n{expected}"
    );
}

/// No initial delay: most scenarios are about what happens after the group first forms.
fn no_delay() -> GroupConfig {
    GroupConfig { initial_rebalance_delay_ms: 0, ..GroupConfig::default() }
}

/// Three members form generation 1 after the initial delay, then the leader's assignment is
/// persisted and handed out (a1, a2, a3).
const THREE_STABLE: &str = "
    @0 join r=1 client=c1 protocols=range:s1
    @100 join r=2 client=c2 protocols=range:s2
    @200 join r=3 client=c3 protocols=range:s3
    @3200 tick
    @3300 sync r=4 member=c2-2 gen=1
    @3300 sync r=5 member=c1-1 gen=1 assign=c1-1:a1,c2-2:a2,c3-3:a3
    @3400 persisted gen=1
    @3500 sync r=6 member=c3-3 gen=1
";

/// What THREE_STABLE renders, which every scenario that continues from it starts with.
const THREE_STABLE_RENDERED: &str = "
        @0 join r=1 client=c1 protocols=range:s1
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1]
        @100 join r=2 client=c2 protocols=range:s2
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2]
        @200 join r=3 client=c3 protocols=range:s3
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2,c3-3]
        @3200 tick
          r1 join ok member=c1-1 gen=1 leader=c1-1 protocol=range members=[c1-1:s1,c2-2:s2,c3-3:s3]
          r2 join ok member=c2-2 gen=1 leader=c1-1 protocol=range
          r3 join ok member=c3-3 gen=1 leader=c1-1 protocol=range
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @3300 sync r=4 member=c2-2 gen=1
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @3300 sync r=5 member=c1-1 gen=1 assign=c1-1:a1,c2-2:a2,c3-3:a3
          persist gen=1 leader=c1-1 protocol=range members=[c1-1=a1,c2-2=a2,c3-3=a3]
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @3400 persisted gen=1
          r5 sync ok assignment=a1
          r4 sync ok assignment=a2
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @3500 sync r=6 member=c3-3 gen=1
          r6 sync ok assignment=a3
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
";

/// A scenario that continues from THREE_STABLE under the default config: `script` and
/// `expected` hold what follows it; the whole rendering is compared.
#[track_caller]
fn check_after_three_stable(script: &str, expected: &str) {
    check(
        GroupConfig::default(),
        &format!("{THREE_STABLE}{script}"),
        &format!("{THREE_STABLE_RENDERED}{expected}"),
    );
}

#[test]
fn three_members_form_one_generation_and_sync_distributes_assignments() {
    check(GroupConfig::default(), THREE_STABLE, THREE_STABLE_RENDERED);
}

#[test]
fn fourth_member_rebalances_and_heartbeats_answer_rebalance_in_progress() {
    check_after_three_stable(
        "
        @4000 join r=7 client=c4 protocols=range:s4
        @4100 heartbeat r=8 member=c1-1 gen=1
        @4100 heartbeat r=9 member=c2-2 gen=1
        @4200 join r=10 member=c1-1 client=c1 protocols=range:s1
        @4200 join r=11 member=c2-2 client=c2 protocols=range:s2
        @4300 join r=12 member=c3-3 client=c3 protocols=range:s3
        @4400 heartbeat r=13 member=c4-4 gen=2
        @4400 sync r=14 member=c1-1 gen=2 assign=c1-1:b1,c2-2:b2,c3-3:b3,c4-4:b4
        @4500 persisted gen=2
        @4600 sync r=15 member=c4-4 gen=2
        @4600 heartbeat r=16 member=c4-4 gen=2
        ",
        r#"
        @4000 join r=7 client=c4 protocols=range:s4
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4100 heartbeat r=8 member=c1-1 gen=1
          r8 heartbeat RebalanceInProgress(27)
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4100 heartbeat r=9 member=c2-2 gen=1
          r9 heartbeat RebalanceInProgress(27)
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4200 join r=10 member=c1-1 client=c1 protocols=range:s1
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4200 join r=11 member=c2-2 client=c2 protocols=range:s2
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4300 join r=12 member=c3-3 client=c3 protocols=range:s3
          r10 join ok member=c1-1 gen=2 leader=c1-1 protocol=range members=[c1-1:s1,c2-2:s2,c3-3:s3,c4-4:s4]
          r11 join ok member=c2-2 gen=2 leader=c1-1 protocol=range
          r12 join ok member=c3-3 gen=2 leader=c1-1 protocol=range
          r7 join ok member=c4-4 gen=2 leader=c1-1 protocol=range
          = CompletingRebalance gen=2 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4400 heartbeat r=13 member=c4-4 gen=2
          r13 heartbeat ok
          = CompletingRebalance gen=2 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4400 sync r=14 member=c1-1 gen=2 assign=c1-1:b1,c2-2:b2,c3-3:b3,c4-4:b4
          persist gen=2 leader=c1-1 protocol=range members=[c1-1=b1,c2-2=b2,c3-3=b3,c4-4=b4]
          = CompletingRebalance gen=2 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4500 persisted gen=2
          r14 sync ok assignment=b1
          = Stable gen=2 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4600 sync r=15 member=c4-4 gen=2
          r15 sync ok assignment=b4
          = Stable gen=2 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
        @4600 heartbeat r=16 member=c4-4 gen=2
          r16 heartbeat ok
          = Stable gen=2 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3,c4-4]
    "#,
    );
}

#[test]
fn silent_member_expires_after_its_session_timeout_and_the_rest_rebalance() {
    check_after_three_stable(
        "
        @8000 heartbeat r=7 member=c1-1 gen=1
        @8000 heartbeat r=8 member=c2-2 gen=1
        # c3 last heard of at 3500; its session is 10s.
        @13499 tick
        @13500 tick
        @13600 heartbeat r=9 member=c1-1 gen=1
        @13700 join r=10 member=c1-1 client=c1 protocols=range:s1
        @13800 join r=11 member=c2-2 client=c2 protocols=range:s2
        ",
        r#"
        @8000 heartbeat r=7 member=c1-1 gen=1
          r7 heartbeat ok
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @8000 heartbeat r=8 member=c2-2 gen=1
          r8 heartbeat ok
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @13499 tick
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @13500 tick
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @13600 heartbeat r=9 member=c1-1 gen=1
          r9 heartbeat RebalanceInProgress(27)
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @13700 join r=10 member=c1-1 client=c1 protocols=range:s1
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @13800 join r=11 member=c2-2 client=c2 protocols=range:s2
          r10 join ok member=c1-1 gen=2 leader=c1-1 protocol=range members=[c1-1:s1,c2-2:s2]
          r11 join ok member=c2-2 gen=2 leader=c1-1 protocol=range
          = CompletingRebalance gen=2 leader=c1-1 protocol=range members=[c1-1,c2-2]
    "#,
    );
}

#[test]
fn rebalance_timeout_completes_the_join_phase_with_whoever_joined() {
    check_after_three_stable(
        "
        @4000 leave r=7 members=c3-3
        @4100 join r=8 member=c1-1 client=c1 protocols=range:s1
        # c2 keeps heartbeating but never rejoins; the rebalance timeout is 30s.
        @20000 heartbeat r=9 member=c2-2 gen=1
        @28000 heartbeat r=10 member=c2-2 gen=1
        @33999 tick
        @34000 tick
        ",
        r#"
        @4000 leave r=7 members=c3-3
          r7 leave ok [c3-3/- ok]
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @4100 join r=8 member=c1-1 client=c1 protocols=range:s1
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @20000 heartbeat r=9 member=c2-2 gen=1
          r9 heartbeat RebalanceInProgress(27)
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @28000 heartbeat r=10 member=c2-2 gen=1
          r10 heartbeat RebalanceInProgress(27)
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @33999 tick
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @34000 tick
          r8 join ok member=c1-1 gen=2 leader=c1-1 protocol=range members=[c1-1:s1]
          = CompletingRebalance gen=2 leader=c1-1 protocol=range members=[c1-1]
    "#,
    );
}

#[test]
fn static_member_restart_within_session_timeout_keeps_the_generation() {
    let script = "
        @0 join r=1 client=c1 instance=i1 protocols=range:s1
        @0 join r=2 client=c2 instance=i2 protocols=range:s2
        @3000 tick
        @3100 sync r=3 member=i1-1 instance=i1 gen=1 assign=i1-1:a1,i2-2:a2
        @3100 sync r=4 member=i2-2 instance=i2 gen=1
        @3200 persisted gen=1
        # i2 restarts: a new process, no member id, same instance id and protocols.
        @5000 join r=5 client=c2 instance=i2 protocols=range:s2
        @5100 sync r=6 member=i2-3 instance=i2 gen=1
        # The old incarnation is fenced.
        @5200 heartbeat r=7 member=i2-2 instance=i2 gen=1
        @5200 heartbeat r=8 member=i2-3 instance=i2 gen=1
        @5300 heartbeat r=9 member=i1-1 instance=i1 gen=1
    ";
    check(
        GroupConfig::default(),
        script,
        r#"
        @0 join r=1 client=c1 instance=i1 protocols=range:s1
          = PreparingRebalance gen=0 leader=- protocol=- members=[i1-1]
        @0 join r=2 client=c2 instance=i2 protocols=range:s2
          = PreparingRebalance gen=0 leader=- protocol=- members=[i1-1,i2-2]
        @3000 tick
          r1 join ok member=i1-1 gen=1 leader=i1-1 protocol=range members=[i1-1/i1:s1,i2-2/i2:s2]
          r2 join ok member=i2-2 gen=1 leader=i1-1 protocol=range
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1,i2-2]
        @3100 sync r=3 member=i1-1 instance=i1 gen=1 assign=i1-1:a1,i2-2:a2
          persist gen=1 leader=i1-1 protocol=range members=[i1-1=a1,i2-2=a2]
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1,i2-2]
        @3100 sync r=4 member=i2-2 instance=i2 gen=1
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1,i2-2]
        @3200 persisted gen=1
          r3 sync ok assignment=a1
          r4 sync ok assignment=a2
          = Stable gen=1 leader=i1-1 protocol=range members=[i1-1,i2-2]
        @5000 join r=5 client=c2 instance=i2 protocols=range:s2
          persist gen=1 leader=i1-1 protocol=range members=[i1-1=a1,i2-3=a2]
          r5 join ok member=i2-3 gen=1 leader=i1-1 protocol=range
          = Stable gen=1 leader=i1-1 protocol=range members=[i1-1,i2-3]
        @5100 sync r=6 member=i2-3 instance=i2 gen=1
          r6 sync ok assignment=a2
          = Stable gen=1 leader=i1-1 protocol=range members=[i1-1,i2-3]
        @5200 heartbeat r=7 member=i2-2 instance=i2 gen=1
          r7 heartbeat FencedInstanceId(82)
          = Stable gen=1 leader=i1-1 protocol=range members=[i1-1,i2-3]
        @5200 heartbeat r=8 member=i2-3 instance=i2 gen=1
          r8 heartbeat ok
          = Stable gen=1 leader=i1-1 protocol=range members=[i1-1,i2-3]
        @5300 heartbeat r=9 member=i1-1 instance=i1 gen=1
          r9 heartbeat ok
          = Stable gen=1 leader=i1-1 protocol=range members=[i1-1,i2-3]
    "#,
    );
}

#[test]
fn static_member_rejoining_with_new_protocols_rebalances() {
    let script = "
        @0 join r=1 client=c1 instance=i1 protocols=range:s1
        @0 tick
        @100 sync r=2 member=i1-1 instance=i1 gen=1 assign=i1-1:a1
        @100 persisted gen=1
        @5000 join r=3 client=c1 instance=i1 protocols=range:t1
    ";
    check(
        no_delay(),
        script,
        r#"
        @0 join r=1 client=c1 instance=i1 protocols=range:s1
          r1 join ok member=i1-1 gen=1 leader=i1-1 protocol=range members=[i1-1/i1:s1]
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1]
        @0 tick
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1]
        @100 sync r=2 member=i1-1 instance=i1 gen=1 assign=i1-1:a1
          persist gen=1 leader=i1-1 protocol=range members=[i1-1=a1]
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1]
        @100 persisted gen=1
          r2 sync ok assignment=a1
          = Stable gen=1 leader=i1-1 protocol=range members=[i1-1]
        @5000 join r=3 client=c1 instance=i1 protocols=range:t1
          r3 join ok member=i1-2 gen=2 leader=i1-2 protocol=range members=[i1-2/i1:t1]
          = CompletingRebalance gen=2 leader=i1-2 protocol=range members=[i1-2]
    "#,
    );
}

#[test]
fn stale_generation_is_illegal_generation() {
    check_after_three_stable(
        "
        @4000 heartbeat r=7 member=c1-1 gen=0
        @4000 sync r=8 member=c2-2 gen=2
        ",
        r#"
        @4000 heartbeat r=7 member=c1-1 gen=0
          r7 heartbeat IllegalGeneration(22)
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @4000 sync r=8 member=c2-2 gen=2
          r8 sync IllegalGeneration(22)
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
    "#,
    );
}

#[test]
fn unknown_member_is_refused_everywhere() {
    check_after_three_stable(
        "
        @4000 join r=7 member=nobody client=x
        @4000 sync r=8 member=nobody gen=1
        @4000 heartbeat r=9 member=nobody gen=1
        @4000 leave r=10 members=nobody,c3-3
        ",
        r#"
        @4000 join r=7 member=nobody client=x
          r7 join UnknownMemberId(25) member=nobody
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @4000 sync r=8 member=nobody gen=1
          r8 sync UnknownMemberId(25)
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @4000 heartbeat r=9 member=nobody gen=1
          r9 heartbeat UnknownMemberId(25)
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @4000 leave r=10 members=nobody,c3-3
          r10 leave ok [nobody/- UnknownMemberId(25), c3-3/- ok]
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
    "#,
    );
}

#[test]
fn new_member_on_join_v4_must_come_back_with_the_id_it_was_given() {
    let script = "
        @0 join r=1 client=c1 session=60000 v4
        @0 join r=2 client=c1 member=c1-1 session=60000 v4
        # An id handed out but never used lapses after the session timeout.
        @100 join r=3 client=c2 v4
        @10099 tick
        @10100 tick
        @10200 join r=4 client=c2 member=c2-2 v4
    ";
    check(
        no_delay(),
        script,
        r#"
        @0 join r=1 client=c1 session=60000 v4
          r1 join MemberIdRequired(79) member=c1-1
          = Empty gen=0 leader=- protocol=- members=[]
        @0 join r=2 client=c1 member=c1-1 session=60000 v4
          r2 join ok member=c1-1 gen=1 leader=c1-1 protocol=range members=[c1-1:sub]
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @100 join r=3 client=c2 v4
          r3 join MemberIdRequired(79) member=c2-2
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @10099 tick
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @10100 tick
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @10200 join r=4 client=c2 member=c2-2 v4
          r4 join UnknownMemberId(25) member=c2-2
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
    "#,
    );
}

#[test]
fn no_common_protocol_is_inconsistent_group_protocol() {
    let script = "
        @0 join r=1 client=c1 protocols=range:s1,roundrobin:s1
        @0 join r=2 client=c2 protocols=sticky:s2
        @0 join r=3 client=c3 type=connect protocols=range:s3
        @0 join r=4 client=c4 protocols=
    ";
    check(
        no_delay(),
        script,
        r#"
        @0 join r=1 client=c1 protocols=range:s1,roundrobin:s1
          r1 join ok member=c1-1 gen=1 leader=c1-1 protocol=range members=[c1-1:s1]
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @0 join r=2 client=c2 protocols=sticky:s2
          r2 join InconsistentGroupProtocol(23) member=
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @0 join r=3 client=c3 type=connect protocols=range:s3
          r3 join InconsistentGroupProtocol(23) member=
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @0 join r=4 client=c4 protocols=
          r4 join InconsistentGroupProtocol(23) member=
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
    "#,
    );
}

#[test]
fn protocol_is_the_common_one_most_members_prefer() {
    let script = "
        @0 join r=1 client=c1 protocols=range:s1,roundrobin:s1,sticky:s1
        @0 join r=2 client=c2 protocols=roundrobin:s2,range:s2
        @0 join r=3 client=c3 protocols=roundrobin:s3,range:s3,cooperative:s3
        @3000 tick
    ";
    check(
        GroupConfig::default(),
        script,
        r#"
        @0 join r=1 client=c1 protocols=range:s1,roundrobin:s1,sticky:s1
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1]
        @0 join r=2 client=c2 protocols=roundrobin:s2,range:s2
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2]
        @0 join r=3 client=c3 protocols=roundrobin:s3,range:s3,cooperative:s3
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2,c3-3]
        @3000 tick
          r1 join ok member=c1-1 gen=1 leader=c1-1 protocol=roundrobin members=[c1-1:s1,c2-2:s2,c3-3:s3]
          r2 join ok member=c2-2 gen=1 leader=c1-1 protocol=roundrobin
          r3 join ok member=c3-3 gen=1 leader=c1-1 protocol=roundrobin
          = CompletingRebalance gen=1 leader=c1-1 protocol=roundrobin members=[c1-1,c2-2,c3-3]
    "#,
    );
}

#[test]
fn initial_rebalance_delay_waits_for_more_members_up_to_the_rebalance_timeout() {
    let script = "
        @0 join r=1 client=c1 rebalance=5000
        @2000 join r=2 client=c2 rebalance=5000
        @2999 tick
        @4000 join r=3 client=c3 rebalance=5000
        @4999 tick
        # Each newcomer pushes the deadline by 3s, but never past 0 + 5s.
        @5000 tick
    ";
    check(
        GroupConfig::default(),
        script,
        r#"
        @0 join r=1 client=c1 rebalance=5000
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1]
        @2000 join r=2 client=c2 rebalance=5000
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2]
        @2999 tick
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2]
        @4000 join r=3 client=c3 rebalance=5000
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2,c3-3]
        @4999 tick
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2,c3-3]
        @5000 tick
          r1 join ok member=c1-1 gen=1 leader=c1-1 protocol=range members=[c1-1:sub,c2-2:sub,c3-3:sub]
          r2 join ok member=c2-2 gen=1 leader=c1-1 protocol=range
          r3 join ok member=c3-3 gen=1 leader=c1-1 protocol=range
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
    "#,
    );
}

#[test]
fn last_member_leaving_empties_the_group_which_can_then_be_deleted() {
    check_after_three_stable(
        "
        @4000 delete
        @4000 leave r=8 members=c1-1,c2-2
        @4000 leave r=9 members=c3-3
        @4100 heartbeat r=11 member=c3-3 gen=2
        @4200 delete
        @4300 join r=7 client=c5
        @4300 heartbeat r=10 member=c3-3 gen=2
        ",
        r#"
        @4000 delete
          refused NonEmptyGroup(68)
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2,c3-3]
        @4000 leave r=8 members=c1-1,c2-2
          r8 leave ok [c1-1/- ok, c2-2/- ok]
          = PreparingRebalance gen=1 leader=c3-3 protocol=range members=[c3-3]
        @4000 leave r=9 members=c3-3
          r9 leave ok [c3-3/- ok]
          persist gen=2 leader=- protocol=- members=[]
          = Empty gen=2 leader=- protocol=- members=[]
        @4100 heartbeat r=11 member=c3-3 gen=2
          r11 heartbeat UnknownMemberId(25)
          = Empty gen=2 leader=- protocol=- members=[]
        @4200 delete
          tombstone g
          = Dead gen=2 leader=- protocol=- members=[]
        @4300 join r=7 client=c5
          r7 join CoordinatorNotAvailable(15) member=
          = Dead gen=2 leader=- protocol=- members=[]
        @4300 heartbeat r=10 member=c3-3 gen=2
          r10 heartbeat CoordinatorNotAvailable(15)
          = Dead gen=2 leader=- protocol=- members=[]
    "#,
    );
}

#[test]
fn failed_persist_answers_waiting_followers_with_the_error() {
    let script = "
        @0 join r=1 client=c1
        @0 join r=2 client=c2
        @3000 tick
        @3100 sync r=3 member=c2-2 gen=1
        @3100 sync r=4 member=c1-1 gen=1 assign=c1-1:a1,c2-2:a2
        @3200 persisted gen=1 fail
    ";
    check(
        GroupConfig::default(),
        script,
        r#"
        @0 join r=1 client=c1
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1]
        @0 join r=2 client=c2
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2]
        @3000 tick
          r1 join ok member=c1-1 gen=1 leader=c1-1 protocol=range members=[c1-1:sub,c2-2:sub]
          r2 join ok member=c2-2 gen=1 leader=c1-1 protocol=range
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @3100 sync r=3 member=c2-2 gen=1
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @3100 sync r=4 member=c1-1 gen=1 assign=c1-1:a1,c2-2:a2
          persist gen=1 leader=c1-1 protocol=range members=[c1-1=a1,c2-2=a2]
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @3200 persisted gen=1 fail
          r4 sync CoordinatorNotAvailable(15)
          r3 sync CoordinatorNotAvailable(15)
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
    "#,
    );
}

#[test]
fn member_leaving_during_completing_rebalance_abandons_the_generation() {
    let script = "
        @0 join r=1 client=c1
        @0 join r=2 client=c2
        @3000 tick
        @3100 sync r=3 member=c2-2 gen=1
        @3200 leave r=4 members=c1-1
        @3300 join r=5 member=c2-2 client=c2
        @3400 sync r=6 member=c2-2 gen=2 assign=c2-2:z
        @3500 persisted gen=2
    ";
    check(
        GroupConfig::default(),
        script,
        r#"
        @0 join r=1 client=c1
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1]
        @0 join r=2 client=c2
          = PreparingRebalance gen=0 leader=- protocol=- members=[c1-1,c2-2]
        @3000 tick
          r1 join ok member=c1-1 gen=1 leader=c1-1 protocol=range members=[c1-1:sub,c2-2:sub]
          r2 join ok member=c2-2 gen=1 leader=c1-1 protocol=range
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @3100 sync r=3 member=c2-2 gen=1
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c2-2]
        @3200 leave r=4 members=c1-1
          r4 leave ok [c1-1/- ok]
          r3 sync RebalanceInProgress(27)
          = PreparingRebalance gen=1 leader=c2-2 protocol=range members=[c2-2]
        @3300 join r=5 member=c2-2 client=c2
          r5 join ok member=c2-2 gen=2 leader=c2-2 protocol=range members=[c2-2:sub]
          = CompletingRebalance gen=2 leader=c2-2 protocol=range members=[c2-2]
        @3400 sync r=6 member=c2-2 gen=2 assign=c2-2:z
          persist gen=2 leader=c2-2 protocol=range members=[c2-2=z]
          = CompletingRebalance gen=2 leader=c2-2 protocol=range members=[c2-2]
        @3500 persisted gen=2
          r6 sync ok assignment=z
          = Stable gen=2 leader=c2-2 protocol=range members=[c2-2]
    "#,
    );
}

#[test]
fn static_member_leaves_by_instance_id_and_a_wrong_pairing_is_fenced() {
    let script = "
        @0 join r=1 client=c1 instance=i1
        @0 join r=2 client=c2 instance=i2
        @3000 tick
        @3100 leave r=3 members=i1-1/i2,/i1
    ";
    check(
        GroupConfig::default(),
        script,
        r#"
        @0 join r=1 client=c1 instance=i1
          = PreparingRebalance gen=0 leader=- protocol=- members=[i1-1]
        @0 join r=2 client=c2 instance=i2
          = PreparingRebalance gen=0 leader=- protocol=- members=[i1-1,i2-2]
        @3000 tick
          r1 join ok member=i1-1 gen=1 leader=i1-1 protocol=range members=[i1-1/i1:sub,i2-2/i2:sub]
          r2 join ok member=i2-2 gen=1 leader=i1-1 protocol=range
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1,i2-2]
        @3100 leave r=3 members=i1-1/i2,/i1
          r3 leave ok [i1-1/i2 FencedInstanceId(82), /i1 ok]
          = PreparingRebalance gen=1 leader=i2-2 protocol=range members=[i2-2]
    "#,
    );
}

// ---- focused checks ----------------------------------------------------------------------

fn join_req(client: &str, member_id: &str) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_owned(),
        group_instance_id: None,
        client_id: client.to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".to_owned(),
        protocols: vec![Protocol { name: "range".to_owned(), metadata: Bytes::new() }],
        require_known_member_id: false,
    }
}

fn counter_ids() -> impl FnMut(&str) -> String {
    let mut n = 0;
    move |prefix: &str| {
        n += 1;
        format!("{prefix}-{n}")
    }
}

fn join_error_of(effects: &[Effect]) -> Option<GroupError> {
    match effects {
        [Effect::Join { response, .. }] => response.error,
        other => panic!("expected one JoinGroup reply, got {other:?}"),
    }
}

#[test]
fn join_beyond_members_per_group_max_is_group_max_size_reached() {
    let mut g = Group::new("g".to_owned(), GroupConfig::default());
    let mut ids = counter_ids();
    for i in 0..MEMBERS_PER_GROUP_MAX {
        let effects = g.join(ReplyTo(i as u64), join_req("c", ""), 0, &mut ids);
        assert!(effects.is_empty(), "the initial delay parks every join");
    }
    let effects = g.join(ReplyTo(u64::MAX), join_req("c", ""), 0, &mut ids);
    assert_eq!(join_error_of(&effects), Some(GroupError::GroupMaxSizeReached));
    assert_eq!(g.member_ids().count(), MEMBERS_PER_GROUP_MAX);
}

#[test]
fn pending_member_ids_are_bounded_too() {
    let mut g = Group::new("g".to_owned(), GroupConfig::default());
    let mut ids = counter_ids();
    let v4 = || JoinRequest { require_known_member_id: true, ..join_req("c", "") };
    for i in 0..PENDING_MEMBERS_PER_GROUP_MAX {
        let effects = g.join(ReplyTo(i as u64), v4(), 0, &mut ids);
        assert_eq!(join_error_of(&effects), Some(GroupError::MemberIdRequired));
    }
    let effects = g.join(ReplyTo(u64::MAX), v4(), 0, &mut ids);
    assert_eq!(join_error_of(&effects), Some(GroupError::GroupMaxSizeReached));
    // They lapse after the session timeout, freeing room.
    assert!(g.tick(10_000).is_empty());
    let effects = g.join(ReplyTo(u64::MAX), v4(), 10_000, &mut ids);
    assert_eq!(join_error_of(&effects), Some(GroupError::MemberIdRequired));
}

#[test]
fn session_timeout_outside_the_broker_bounds_is_invalid_session_timeout() {
    let mut g = Group::new("g".to_owned(), GroupConfig::default());
    let mut ids = counter_ids();
    for session_timeout_ms in [5_999, 1_800_001] {
        let req = JoinRequest { session_timeout_ms, ..join_req("c", "") };
        let effects = g.join(ReplyTo(1), req, 0, &mut ids);
        assert_eq!(join_error_of(&effects), Some(GroupError::InvalidSessionTimeout));
    }
    assert_eq!(g.state(), GroupState::Empty);
}

#[test]
fn too_many_protocols_is_invalid_request() {
    let mut g = Group::new("g".to_owned(), GroupConfig::default());
    let protocols = (0..=PROTOCOLS_PER_MEMBER_MAX)
        .map(|i| Protocol { name: format!("p{i}"), metadata: Bytes::new() })
        .collect();
    let req = JoinRequest { protocols, ..join_req("c", "") };
    let effects = g.join(ReplyTo(1), req, 0, &mut counter_ids());
    assert_eq!(join_error_of(&effects), Some(GroupError::InvalidRequest));
}

#[test]
fn next_deadline_is_the_join_phase_end_then_the_earliest_session_expiry() {
    let mut g = Group::new("g".to_owned(), GroupConfig::default());
    let mut ids = counter_ids();
    assert_eq!(g.next_deadline_ms(), None);
    g.join(ReplyTo(1), join_req("c", ""), 1_000, &mut ids);
    // A member parked in the join phase is not subject to its session.
    assert_eq!(g.next_deadline_ms(), Some(4_000));
    assert_eq!(g.tick(4_000).len(), 1);
    assert_eq!(g.state(), GroupState::CompletingRebalance);
    assert_eq!(g.next_deadline_ms(), Some(14_000));
}

#[test]
fn persist_outcome_for_an_abandoned_generation_changes_nothing() {
    let mut h = Harness::new(no_delay());
    for line in [
        "@0 join r=1 client=c1",
        "@0 sync r=2 member=c1-1 gen=1 assign=c1-1:a",
        "@10 join r=3 client=c2",
    ] {
        h.step(line).unwrap();
    }
    assert_eq!(h.group.state(), GroupState::PreparingRebalance);
    assert_eq!(h.group.persisted(1, Ok(())), Vec::new());
    assert_eq!(h.group.state(), GroupState::PreparingRebalance);
}

#[test]
fn follower_rejoining_a_stable_group_unchanged_gets_the_current_generation() {
    let mut h = Harness::new(no_delay());
    for line in [
        "@0 join r=1 client=c1",
        "@0 sync r=2 member=c1-1 gen=1 assign=c1-1:a",
        "@0 persisted gen=1",
        "@10 join r=3 client=c2",
        "@20 join r=4 member=c1-1 client=c1",
        "@30 sync r=5 member=c1-1 gen=2 assign=c1-1:a,c2-2:b",
        "@30 persisted gen=2",
    ] {
        h.step(line).unwrap();
    }
    assert_eq!(h.group.state(), GroupState::Stable);
    let effects = h.step("@40 join r=6 member=c2-2 client=c2").unwrap();
    assert!(
        matches!(&effects[..], [Effect::Join { response, .. }]
            if response.error.is_none() && response.generation_id == 2 && response.members.is_empty()),
        "{effects:?}"
    );
    assert_eq!((h.group.state(), h.group.generation_id()), (GroupState::Stable, 2));
    // The leader rejoining asks for a new assignment: that is a rebalance.
    assert!(h.step("@50 join r=7 member=c1-1 client=c1").unwrap().is_empty());
    assert_eq!(h.group.state(), GroupState::PreparingRebalance);
}

#[test]
fn a_repeated_join_supersedes_the_parked_one() {
    let mut h = Harness::new(GroupConfig::default());
    h.step("@0 join r=1 client=c1").unwrap();
    let effects = h.step("@10 join r=2 member=c1-1 client=c1").unwrap();
    assert_eq!(join_error_of(&effects), Some(GroupError::RebalanceInProgress));
    assert!(matches!(&effects[..], [Effect::Join { to: ReplyTo(1), .. }]));
    let effects = h.step("@3000 tick").unwrap();
    assert!(matches!(&effects[..], [Effect::Join { to: ReplyTo(2), response }]
        if response.error.is_none() && response.generation_id == 1));
}

#[test]
fn static_leader_restart_keeps_the_generation_and_is_told_not_to_assign() {
    let script = "
        @0 join r=1 client=c1 instance=i1 protocols=range:s1
        @0 join r=2 client=c2 instance=i2 protocols=range:s2
        @3000 tick
        @3100 sync r=3 member=i1-1 instance=i1 gen=1 assign=i1-1:a1,i2-2:a2
        @3200 persisted gen=1
        @5000 join r=4 client=c1 instance=i1 protocols=range:s1
        @5100 sync r=5 member=i1-3 instance=i1 gen=1
    ";
    check(
        GroupConfig::default(),
        script,
        r#"
        @0 join r=1 client=c1 instance=i1 protocols=range:s1
          = PreparingRebalance gen=0 leader=- protocol=- members=[i1-1]
        @0 join r=2 client=c2 instance=i2 protocols=range:s2
          = PreparingRebalance gen=0 leader=- protocol=- members=[i1-1,i2-2]
        @3000 tick
          r1 join ok member=i1-1 gen=1 leader=i1-1 protocol=range members=[i1-1/i1:s1,i2-2/i2:s2]
          r2 join ok member=i2-2 gen=1 leader=i1-1 protocol=range
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1,i2-2]
        @3100 sync r=3 member=i1-1 instance=i1 gen=1 assign=i1-1:a1,i2-2:a2
          persist gen=1 leader=i1-1 protocol=range members=[i1-1=a1,i2-2=a2]
          = CompletingRebalance gen=1 leader=i1-1 protocol=range members=[i1-1,i2-2]
        @3200 persisted gen=1
          r3 sync ok assignment=a1
          = Stable gen=1 leader=i1-1 protocol=range members=[i1-1,i2-2]
        @5000 join r=4 client=c1 instance=i1 protocols=range:s1
          persist gen=1 leader=i1-3 protocol=range members=[i1-3=a1,i2-2=a2]
          r4 join ok member=i1-3 gen=1 leader=i1-3 protocol=range members=[i1-3/i1:s1,i2-2/i2:s2] skip_assignment
          = Stable gen=1 leader=i1-3 protocol=range members=[i1-3,i2-2]
        @5100 sync r=5 member=i1-3 instance=i1 gen=1
          r5 sync ok assignment=a1
          = Stable gen=1 leader=i1-3 protocol=range members=[i1-3,i2-2]
    "#,
    );
}

#[test]
fn join_phase_ends_once_a_pending_member_id_lapses() {
    let script = "
        @0 join r=1 client=c1 session=60000
        @0 sync r=2 member=c1-1 gen=1 assign=c1-1:a
        @0 persisted gen=1
        @100 join r=3 client=c2 v4
        @200 join r=4 client=c3
        @300 join r=5 member=c1-1 client=c1 session=60000
        # Waiting for c2, which was handed c2-2 but never came back with it.
        @10099 tick
        @10100 tick
    ";
    check(
        no_delay(),
        script,
        r#"
        @0 join r=1 client=c1 session=60000
          r1 join ok member=c1-1 gen=1 leader=c1-1 protocol=range members=[c1-1:sub]
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @0 sync r=2 member=c1-1 gen=1 assign=c1-1:a
          persist gen=1 leader=c1-1 protocol=range members=[c1-1=a]
          = CompletingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1]
        @0 persisted gen=1
          r2 sync ok assignment=a
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1]
        @100 join r=3 client=c2 v4
          r3 join MemberIdRequired(79) member=c2-2
          = Stable gen=1 leader=c1-1 protocol=range members=[c1-1]
        @200 join r=4 client=c3
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c3-3]
        @300 join r=5 member=c1-1 client=c1 session=60000
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c3-3]
        @10099 tick
          = PreparingRebalance gen=1 leader=c1-1 protocol=range members=[c1-1,c3-3]
        @10100 tick
          r5 join ok member=c1-1 gen=2 leader=c1-1 protocol=range members=[c1-1:sub,c3-3:sub]
          r4 join ok member=c3-3 gen=2 leader=c1-1 protocol=range
          = CompletingRebalance gen=2 leader=c1-1 protocol=range members=[c1-1,c3-3]
    "#,
    );
}

fn member_record(id: &str, instance: Option<&str>, assignment: &'static [u8]) -> MemberRecord {
    MemberRecord {
        member_id: id.to_owned(),
        group_instance_id: instance.map(str::to_owned),
        client_id: "c".to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        rebalance_timeout_ms: 30_000,
        session_timeout_ms: 10_000,
        subscription: Bytes::from_static(b"sub"),
        assignment: Bytes::from_static(assignment),
    }
}

fn stable_record() -> GroupRecord {
    GroupRecord {
        group_id: "g".to_owned(),
        generation_id: 7,
        protocol_type: Some("consumer".to_owned()),
        protocol_name: Some("range".to_owned()),
        leader: Some("m-1".to_owned()),
        current_state_timestamp_ms: 0,
        members: vec![member_record("m-1", None, b"a1"), member_record("m-2", Some("i-2"), b"a2")],
    }
}

#[test]
fn a_loaded_group_resumes_its_generation_with_the_same_members_and_assignments() {
    let mut g = Group::load(stable_record(), GroupConfig::default(), 1_000);
    assert_eq!(g.state(), GroupState::Stable);
    assert_eq!(g.generation_id(), 7);
    assert_eq!(g.leader(), Some("m-1"));
    let members = g.describe_members();
    assert_eq!(members.len(), 2);
    assert_eq!(members[1].assignment, Bytes::from_static(b"a2"));
    assert_eq!(members[1].subscription, Bytes::from_static(b"sub"));
    // Members carry on with heartbeats of the loaded generation: no rebalance.
    let hb = g.heartbeat(ReplyTo(1), "m-1", None, 7, 2_000);
    assert_eq!(hb, vec![Effect::Heartbeat { to: ReplyTo(1), error: None }]);
    // The static member is known by its instance id, and a stale holder is fenced.
    let hb = g.heartbeat(ReplyTo(2), "m-other", Some("i-2"), 7, 2_000);
    assert_eq!(
        hb,
        vec![Effect::Heartbeat { to: ReplyTo(2), error: Some(GroupError::FencedInstanceId) }]
    );
    // Members that never come back expire after their session, counted from the load (m-2)
    // or from their last heartbeat (m-1); the group then rebalances, and empties.
    assert!(g.tick(10_999).is_empty());
    g.tick(11_000);
    assert_eq!(g.state(), GroupState::PreparingRebalance);
    let effects = g.tick(12_000);
    assert!(effects.iter().any(|e| matches!(e, Effect::PersistGroup(r) if r.members.is_empty())));
    assert_eq!(g.state(), GroupState::Empty);
}

#[test]
fn a_loaded_group_without_members_is_empty() {
    let mut record = stable_record();
    record.members.clear();
    let g = Group::load(record, GroupConfig::default(), 0);
    assert_eq!((g.state(), g.generation_id(), g.protocol_name()), (GroupState::Empty, 7, None));
}

#[test]
fn offset_commits_follow_kafkas_membership_rules() {
    let mut empty = Group::new("g".to_owned(), GroupConfig::default());
    assert_eq!(empty.validate_offset_commit("", None, -1, 0), Ok(()), "assign()-only commit");
    assert_eq!(
        empty.validate_offset_commit("m-1", None, 3, 0),
        Err(GroupError::UnknownMemberId),
        "a member of a generation the group no longer has"
    );
    let mut g = Group::load(stable_record(), GroupConfig::default(), 0);
    assert_eq!(g.validate_offset_commit("m-1", None, 7, 0), Ok(()));
    assert_eq!(g.validate_offset_commit("m-1", None, 6, 0), Err(GroupError::IllegalGeneration));
    assert_eq!(g.validate_offset_commit("m-9", None, 7, 0), Err(GroupError::UnknownMemberId));
    assert_eq!(g.validate_offset_commit("", None, -1, 0), Err(GroupError::UnknownMemberId));
    assert_eq!(
        g.validate_offset_commit("m-x", Some("i-2"), 7, 0),
        Err(GroupError::FencedInstanceId)
    );
    // A commit counts as a heartbeat: m-1 outlives m-2's session.
    assert_eq!(g.validate_offset_commit("m-1", None, 7, 9_000), Ok(()));
    g.tick(10_000);
    assert_eq!(
        g.describe_members().iter().map(|m| m.member_id.as_str()).collect::<Vec<_>>(),
        ["m-1"]
    );
    // Once a rebalance has picked a generation, commits wait for the assignment.
    let mut ids = counter_ids();
    let mut g = Group::new(
        "g".to_owned(),
        GroupConfig { initial_rebalance_delay_ms: 0, ..GroupConfig::default() },
    );
    let joined = g.join(ReplyTo(1), join_req("c", ""), 0, &mut ids);
    let Some(Effect::Join { response, .. }) = joined.first() else { panic!("{joined:?}") };
    let (member, generation) = (response.member_id.clone(), response.generation_id);
    g.tick(0);
    assert_eq!(g.state(), GroupState::CompletingRebalance);
    assert_eq!(
        g.validate_offset_commit(&member, None, generation, 0),
        Err(GroupError::RebalanceInProgress)
    );
}
