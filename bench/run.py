#!/usr/bin/env python3
"""make bench: forkq's end-to-end throughput against xargs -P, in one run.

    python3 bench/run.py --bin-dir src [-n 2000] [-j NCPU] [--reps 3]

Each rep: N submits of /bin/true pipelined on one connection to a fresh
forkqd (every task and attempt durably recorded), until all succeeded; then
`seq N | xargs -P J -n1 /bin/true` (raw fork+exec, records nothing). Prints
the medians and the ratio forkq/xargs. Then, when ../shared/bench/peers.py
is beside the checkout, runs it too for task-spooler and GNU parallel.
Standard library only; every process it starts is stopped by pid."""
import argparse, json, os, signal, socket, statistics, subprocess, sys
import tempfile, threading, time


class Forkqd:
    def __init__(self, bindir, workers, root):
        self.dir = tempfile.mkdtemp(prefix="forkqd-", dir=root)
        self.sock = os.path.join(self.dir, "forkq.sock")
        self.proc = subprocess.Popen(
            [os.path.join(bindir, "forkqd"), "-D", self.dir, "-s", self.sock,
             "-j", str(workers), "-l", os.path.join(self.dir, "events.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.connect().close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise SystemExit("forkqd did not start within 10 s")

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock)
        return s

    def request(self, req):
        with self.connect() as s:
            s.sendall((json.dumps(req) + "\n").encode())
            return json.loads(s.makefile().readline())

    def run_batch(self, n):
        s = self.connect()
        line = (json.dumps({"op": "submit", "argv": ["/bin/true"],
                            "max_attempts": 1}) + "\n").encode()
        writer = threading.Thread(target=lambda: s.sendall(line * n))
        writer.start()
        f = s.makefile()
        ids = []
        for _ in range(n):
            ans = json.loads(f.readline())
            if not ans.get("ok"):
                raise SystemExit(f"submit refused: {ans}")
            ids.append(ans["task"]["id"])
        writer.join()
        # wait for the last one, then check all succeeded
        for i in ids[-1:]:
            s.sendall((json.dumps({"op": "wait", "id": i}) + "\n").encode())
            f.readline()
        s.close()
        while True:
            counts = self.request({"op": "status"})["status"]["counts"]
            if counts["queued"] == 0 and counts["running"] == 0:
                return counts
            time.sleep(0.002)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-j", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="forkq-bench-")
    fq, xa, ratio = [], [], []
    for rep in range(a.reps):
        d = Forkqd(a.bin_dir, a.j, root)
        try:
            t0 = time.monotonic()
            counts = d.run_batch(a.n)
            t = time.monotonic() - t0
            rss = d.rss_kb()
        finally:
            d.stop()
        if counts["succeeded"] != a.n:
            raise SystemExit(f"only {counts['succeeded']} of {a.n} succeeded")
        tx = timed(lambda: subprocess.run(
            f"seq {a.n} | xargs -P {a.j} -n1 /bin/true", shell=True,
            check=True))
        fq.append(a.n / t)
        xa.append(a.n / tx)
        ratio.append((a.n / t) / (a.n / tx))
        print(f"rep {rep + 1}: forkq {a.n / t:.0f} tasks/s, "
              f"xargs -P{a.j} {a.n / tx:.0f} tasks/s, "
              f"forkqd RSS after {rss} kB", flush=True)
    med = statistics.median
    print(f"throughput (N={a.n}, j={a.j}): forkq {med(fq):.0f} tasks/s, "
          f"xargs {med(xa):.0f} tasks/s, ratio forkq/xargs {med(ratio):.2f}")
    subprocess.run(["rm", "-rf", root])
    peers = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "..", "..", "shared", "bench", "peers.py")
    if os.path.exists(peers):
        print("--- peers.py ---", flush=True)
        subprocess.run([sys.executable, peers, "--bin-dir", a.bin_dir,
                        "-n", str(a.n), "-j", str(a.j)])


if __name__ == "__main__":
    main()
