#!/usr/bin/env python3
"""A follower's catch-up through a snapshot (docs/benchmarks.md, "Session 28"): 3 nodes on loopback, one
partition, snapshots every 200 entries; one follower is killed while MB megabytes of 1 KiB events arrive in
batches of 500 (the leader snapshots and purges past it), then started again. Prints the time from the
restart until the follower has applied the leader's last entry, the leader's disk writes meanwhile
(/proc/PID/io write_bytes: Linux only), and what each node keeps in snapshots/. ROOT is emptied first.
Usage: scripts/snapshot-catch-up.py SLUICE_BIN ROOT MB"""
import atexit, json, os, subprocess, sys, time, http.client, socket, uuid, shutil

bin_, root, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
shutil.rmtree(root, ignore_errors=True); os.makedirs(root)

def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return f"127.0.0.1:{p}"

nodes = {i: dict(peer=free(), http=free(), admin=free(), data=f"{root}/node-{i}") for i in (1, 2, 3)}
procs = {}
# The nodes go with this script, whatever way it ends.
atexit.register(lambda: [p.kill() for p in procs.values()])
def start(i):
    n = nodes[i]
    log = open(f"{root}/node-{i}.log", "a")
    procs[i] = subprocess.Popen([bin_, "node", "--id", str(i), "--data", n["data"], "--peer-listen", n["peer"],
        "--http", n["http"], "--admin", n["admin"], "--snapshot-every-entries", "200",
        "--keep-entries-after-snapshot", "20"], stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "info,openraft=warn"})
def status(i):
    out = subprocess.run([bin_, "cluster", "status", "--admin", nodes[i]["admin"], "-o", "json"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None
def group(st, g):
    return next((x for x in st.get("groups", []) if x.get("group", -1) == g), None)
def wait(pred, what, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        try:
            r = pred()
            if r: return r
        except Exception: pass
        time.sleep(0.1)
    raise SystemExit(f"timed out: {what}")
def write_bytes(i):
    for line in open(f"/proc/{procs[i].pid}/io"):
        if line.startswith("write_bytes:"): return int(line.split()[1])

for i in nodes: start(i)
members = ",".join(f"{i}={n['peer']}" for i, n in nodes.items())
wait(lambda: subprocess.run([bin_, "cluster", "init", "--admin", nodes[1]["admin"], "--members", members,
     "--partitions", "1"], capture_output=True).returncode == 0, "init")
leader = wait(lambda: (group(status(1), 1) or {}).get("leader"), "leader")
open(f"{root}/broker.yaml", "w").write("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  namespace: default\n")
subprocess.run([bin_, "apply", "-f", f"{root}/broker.yaml", "--admin", nodes[leader]["admin"]], check=True, capture_output=True)
follower = next(i for i in nodes if i != leader)
time.sleep(1)
procs[follower].kill(); procs[follower].wait()

host, port = nodes[leader]["http"].split(":")
conn = http.client.HTTPConnection(host, int(port))
data = "x" * 1000
sent = 0
t0 = time.time()
while sent < mb * 1_000_000:
    batch = [{"specversion": "1.0", "id": uuid.uuid4().hex, "source": "snapcatch", "type": "t", "data": data} for _ in range(500)]
    body = json.dumps(batch)
    for attempt in range(50):
        conn.request("POST", "/default/default", body, {"content-type": "application/cloudevents-batch+json"})
        r = conn.getresponse(); r.read()
        if r.status == 202: break
        time.sleep(0.1)
    else: raise SystemExit(f"publish: {r.status}")
    sent += len(body)
print(f"ingested {sent/1e6:.0f} MB in {time.time()-t0:.1f} s")
lg = wait(lambda: group(status(leader), 1), "leader status")
print(f"leader: last log {lg.get('last_log')}, purged {lg.get('purged')}, snapshot {lg.get('snapshot')}")
subprocess.run(["sync"])
before = write_bytes(leader)
t1 = time.time()
start(follower)
target = lg["last_log"]
wait(lambda: ((group(status(follower), 1) or {}).get("applied") or 0) >= target, "catch-up", 600)
caught = time.time() - t1
time.sleep(2)
after = write_bytes(leader)
files = sorted(os.listdir(f"{nodes[follower]['data']}/snapshots/group-1"))
lfiles = sorted(os.listdir(f"{nodes[leader]['data']}/snapshots/group-1"))
print(f"follower caught up in {caught:.2f} s; leader wrote {(after-before)/1e6:.1f} MB meanwhile; "
      f"leader snapshots/: {lfiles}; follower snapshots/: {files}")
