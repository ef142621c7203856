//! The workload: producers that publish binary-mode CloudEvents over HTTP to random nodes, and recording
//! subscribers that the Triggers deliver to.
//!
//! A producer `p` publishes events with `source` `/chaos/p<p>` and `id` its sequence number, one at a time
//! at a bounded rate. A 202 is an acknowledgement (`ok`); a 4xx other than 404/408/429 is a definite
//! refusal (`fail`); anything else (timeout, connection error, 5xx, 404 from a node that has not caught up
//! with the metadata group yet, 429) is indeterminate (`info`) and the same id is sent again, to a node drawn
//! again, until acknowledged or the run stops retrying (the broker dedupes by source + id).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ChaosError;
use crate::history::{History, Op};

/// The event types producers alternate between.
pub const TYPES: [&str; 2] = ["chaos.a", "chaos.b"];

/// Shared by the producers: where to publish and when to stop.
pub struct Producers {
    pub https: Vec<String>,
    pub path: String,
    pub client: reqwest::Client,
    pub history: Arc<History>,
    /// Cleared: producers start no new id.
    pub producing: AtomicBool,
    /// Cleared: producers stop retrying their current id (left indeterminate).
    pub retrying: AtomicBool,
    /// Events per second, per producer.
    pub rate: f64,
    pub seed: u64,
}

impl Producers {
    pub fn new(
        https: Vec<String>,
        path: &str,
        history: Arc<History>,
        rate: f64,
        seed: u64,
    ) -> Result<Self, ChaosError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self {
            https,
            path: path.to_string(),
            client,
            history,
            producing: AtomicBool::new(true),
            retrying: AtomicBool::new(true),
            rate,
            seed,
        })
    }

    /// Runs producer `process` until `producing` is cleared (and its last id settled or given up).
    pub async fn run(self: Arc<Self>, process: usize) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(process as u64 + 1)));
        let source = format!("/chaos/p{process}");
        let interval = Duration::from_secs_f64(1.0 / self.rate.max(0.1));
        let mut next = tokio::time::Instant::now();
        let mut seq: u64 = 0;
        while self.producing.load(Ordering::Relaxed) {
            seq += 1;
            let id = seq.to_string();
            let event_type = TYPES[(seq % 2) as usize];
            loop {
                let node = rng.random_range(0..self.https.len());
                let node_id = node as u64 + 1;
                self.history.record(Op::Invoke { process, source: source.clone(), id: id.clone(), node: node_id });
                let result = self.post(&self.https[node], &source, &id, event_type).await;
                let (source, id) = (source.clone(), id.clone());
                match result {
                    Ok(202) => {
                        self.history.record(Op::Ok { process, source, id, node: node_id });
                        break;
                    }
                    Ok(status) if (400..500).contains(&status) && ![404, 408, 429].contains(&status) => {
                        let error = format!("HTTP {status}");
                        self.history.record(Op::Fail { process, source, id, node: node_id, status, error });
                        break;
                    }
                    Ok(status) => self.history.record(Op::Info {
                        process,
                        source,
                        id,
                        node: node_id,
                        error: format!("HTTP {status}"),
                    }),
                    Err(error) => self.history.record(Op::Info { process, source, id, node: node_id, error }),
                }
                if !self.retrying.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
            }
            next += interval;
            let now = tokio::time::Instant::now();
            if next < now {
                next = now;
            }
            tokio::time::sleep_until(next).await;
        }
    }

    async fn post(&self, http: &str, source: &str, id: &str, event_type: &str) -> Result<u16, String> {
        let response = self
            .client
            .post(format!("http://{http}{}", self.path))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", source)
            .header("ce-type", event_type)
            .header("content-type", "application/json")
            .body(format!("{{\"source\":\"{source}\",\"id\":{id}}}"))
            .send()
            .await
            .map_err(|e| if e.is_timeout() { "timeout".to_string() } else { format!("{e}") })?;
        Ok(response.status().as_u16())
    }
}

/// How a subscriber answers: fail (500) a seeded fraction of attempts.
#[derive(Clone, Debug)]
pub struct FailSchedule {
    pub seed: u64,
    /// Trigger name → probability that an attempt fails.
    pub rates: HashMap<String, f64>,
}

impl FailSchedule {
    /// Whether attempt `attempt` of event (source, id) to `trigger` fails: a hash of the seed and the attempt,
    /// so the same seed fails the same attempts.
    pub fn fails(&self, trigger: &str, source: &str, id: &str, attempt: u32) -> bool {
        let Some(&rate) = self.rates.get(trigger) else { return false };
        let mut h: u64 = self.seed ^ 0xcbf2_9ce4_8422_2325;
        for byte in trigger.bytes().chain([0]).chain(source.bytes()).chain([0]).chain(id.bytes()) {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        h ^= u64::from(attempt);
        // splitmix64 finaliser
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        (h as f64 / u64::MAX as f64) < rate
    }
}

/// Recording subscribers: one HTTP server, one path per Trigger (`/{trigger}`).
pub struct Subscribers {
    pub addr: SocketAddr,
    state: Arc<SubscriberState>,
    task: tokio::task::JoinHandle<()>,
}

struct SubscriberState {
    history: Arc<History>,
    schedule: FailSchedule,
    attempts: Mutex<HashMap<(String, String, String), u32>>,
    delivered: Mutex<HashSet<(String, String, String)>>,
}

impl Subscribers {
    pub async fn start(ip: &str, history: Arc<History>, schedule: FailSchedule) -> Result<Self, ChaosError> {
        let state = Arc::new(SubscriberState {
            history,
            schedule,
            attempts: Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashSet::new()),
        });
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .map_err(|e| ChaosError::io(format!("binding a subscriber on {ip}"), e))?;
        let addr = listener.local_addr().map_err(|e| ChaosError::io("subscriber address", e))?;
        let app = Router::new().route("/{trigger}", post(receive)).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    pub fn url(&self, trigger: &str) -> String {
        format!("http://{}/{trigger}", self.addr)
    }

    /// Whether (source, id) was delivered to `trigger` with a 2xx.
    pub fn delivered(&self, trigger: &str, source: &str, id: &str) -> bool {
        let delivered = self.state.delivered.lock().unwrap_or_else(PoisonError::into_inner);
        delivered.contains(&(trigger.to_string(), source.to_string(), id.to_string()))
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<SubscriberState>>,
    Path(trigger): Path<String>,
    headers: HeaderMap,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (source, id) = (header("ce-source"), header("ce-id"));
    let key = (trigger.clone(), source.clone(), id.clone());
    let attempt = {
        let mut attempts = state.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let attempt = attempts.entry(key.clone()).or_default();
        *attempt += 1;
        *attempt
    };
    let status = if state.schedule.fails(&trigger, &source, &id, attempt) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::ACCEPTED
    };
    if status.is_success() {
        state.delivered.lock().unwrap_or_else(PoisonError::into_inner).insert(key);
    }
    state.history.record(Op::Deliver { trigger, source, id, attempt, status: status.as_u16() });
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fail_schedule_is_seeded_and_near_its_rate() {
        let schedule = FailSchedule { seed: 1, rates: HashMap::from([("b".to_string(), 0.3)]) };
        let fails = (0..10_000).filter(|i| schedule.fails("b", "/p0", &i.to_string(), 1)).count();
        assert!((2_700..3_300).contains(&fails), "{fails}");
        assert!((0..1000).all(|i| !schedule.fails("a", "/p0", &i.to_string(), 1)));
        let again = FailSchedule { seed: 1, ..schedule.clone() };
        assert!(
            (0..1000).all(|i| schedule.fails("b", "s", &i.to_string(), 2) == again.fails("b", "s", &i.to_string(), 2))
        );
    }
}
