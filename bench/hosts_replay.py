#!/usr/bin/env python3
"""bench/hosts_replay.py: the load client of bench/hosts (Python 3.11 standard library only).

  replay   a fixed, seeded sequence of non-streamed /api/generate requests over a skewed
           model mix, sent by --clients threads (each with its own keep-alive connection)
           for --seconds; requests still running then may finish for --drain seconds.
  kill     the same replay, plus --streams streamed requests for --stream-model; at
           --kill-at seconds the victim's process is sent SIGKILL while /metrics is read
           every 50 ms for aigate_host_up{host="VICTIM"} 0.
  stats    the sum of the fake hosts' /fake/stats counters, and each host's.

Every result is printed as one `key=value ...` line per measure (what bench/hosts reads);
--out FILE also writes every request's record as JSON.
"""

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse


# A client pauses this long after a failed request before its next one, as a real client
# would, so that a fast-failing proxy is not hammered (nor its failures multiplied).
FAILURE_PAUSE = 0.1


def now():
    return time.monotonic()


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def parse_mix(text):
    """`model:weight,model:weight`; the weight is after the last colon (names hold colons)."""
    mix = []
    for part in text.split(","):
        name, _, weight = part.strip().rpartition(":")
        if not name or not weight:
            sys.exit(f"hosts_replay: bad --mix entry {part!r} (expected MODEL:WEIGHT)")
        mix.append((name, float(weight)))
    return mix


def sequence(seed, mix, predict, count=200_000):
    """The replay: the same seed gives the same requests in the same order."""
    rng = random.Random(seed)
    names = [m for m, _ in mix]
    weights = [w for _, w in mix]
    lo, hi = predict
    return [
        (rng.choices(names, weights)[0], rng.randint(lo, hi))
        for _ in range(count)
    ]


class Target:
    """Where requests go: host, port and the headers every request carries."""

    def __init__(self, url, key):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            sys.exit(f"hosts_replay: expected an http:// URL, not {url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["X-API-Key"] = key

    def connect(self, timeout):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


class Replay:
    """Closed-loop clients taking the next request of one shared sequence."""

    def __init__(self, target, seq, clients, seconds, drain, timeout):
        self.target, self.seq = target, seq
        self.clients, self.seconds, self.drain, self.timeout = clients, seconds, drain, timeout
        self.lock = threading.Lock()
        self.next = 0
        self.records = []  # (start, end, ok, model, status, error) relative to t0
        self.t0 = None
        self.stopping = False  # set when the drain time is over: in-flight ones are abandoned
        self.conns = {}  # thread index -> connection in use, so the drain can cut it

    def take(self):
        with self.lock:
            if now() - self.t0 >= self.seconds or self.next >= len(self.seq):
                return None
            i = self.next
            self.next += 1
            return i

    def one(self, conn, i):
        model, predict = self.seq[i]
        body = json.dumps({
            "model": model,
            "prompt": f"replayed request {i}",
            "stream": False,
            "options": {"num_predict": predict},
        })
        conn.request("POST", "/api/generate", body=body, headers=self.target.headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return False, resp.status, data[:200].decode("utf-8", "replace")
        try:
            answer = json.loads(data)
        except ValueError:
            return False, resp.status, "not JSON: " + data[:100].decode("utf-8", "replace")
        if answer.get("done") is not True:
            return False, resp.status, "no done:true"
        return True, resp.status, ""

    def worker(self, index):
        conn = None
        while True:
            i = self.take()
            if i is None:
                break
            if conn is None:
                conn = self.target.connect(self.timeout)
                self.conns[index] = conn
            start = now()
            try:
                ok, status, error = self.one(conn, i)
            except (OSError, http.client.HTTPException) as e:
                ok, status, error = False, 0, f"{type(e).__name__}: {e}"
                conn.close()
                conn = None
            end = now()
            if self.stopping and not ok:
                error = "abandoned at the end of the drain"
                status = -1
            with self.lock:
                self.records.append((start - self.t0, end - self.t0, ok, self.seq[i][0], status, error))
            if self.stopping:
                break
            if not ok:
                time.sleep(FAILURE_PAUSE)
        if conn is not None:
            conn.close()

    def start(self):
        self.t0 = now()
        self.threads = [threading.Thread(target=self.worker, args=(k,), daemon=True)
                        for k in range(self.clients)]
        for t in self.threads:
            t.start()

    def join(self):
        deadline = self.t0 + self.seconds + self.drain
        for t in self.threads:
            t.join(max(0.0, deadline - now()))
        if any(t.is_alive() for t in self.threads):
            self.stopping = True
            for conn in list(self.conns.values()):
                try:
                    if conn.sock is not None:
                        conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for t in self.threads:
                t.join(5)

    def summary(self):
        """key=value fields of the whole run."""
        window = self.seconds
        ok_in_window = sum(1 for r in self.records if r[2] and r[1] <= window)
        ok = sorted(r[1] - r[0] for r in self.records if r[2])
        failed = [r for r in self.records if not r[2] and r[4] != -1]
        abandoned = sum(1 for r in self.records if r[4] == -1)
        fields = {
            "sent": len(self.records),
            "completed": len(ok),
            "completed_in_window": ok_in_window,
            "per_minute": f"{ok_in_window * 60 / window:.1f}",
            "failed": len(failed),
            "abandoned": abandoned,
            "p50_ms": fmt_ms(percentile(ok, 50)),
            "p99_ms": fmt_ms(percentile(ok, 99)),
            "max_ms": fmt_ms(ok[-1] if ok else None),
        }
        return fields, failed


def fmt_ms(seconds):
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def reasons(failed, limit=3):
    """The most common failure reasons, as one short text."""
    counts = {}
    for r in failed:
        why = f"{r[4]} {r[5]}".strip()
        why = re.sub(r"\s+", " ", why)[:90]
        counts[why] = counts.get(why, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{n}x {why}" for why, n in top) or "-"


def kv(**fields):
    return " ".join(f"{k}={v}" for k, v in fields.items())


def emit(kind, fields):
    print(kind, kv(**fields), flush=True)


# ---------------------------------------------------------------------------
# kill: streams on the victim, the metrics poller, SIGKILL
# ---------------------------------------------------------------------------

UP_RE = re.compile(r'^aigate_host_up\{([^}]*)\}\s+(\S+)', re.M)
HOST_RE = re.compile(r'host="([^"]*)"')


def host_up(text):
    """host name -> value of aigate_host_up, from a Prometheus text page."""
    out = {}
    for labels, value in UP_RE.findall(text):
        m = HOST_RE.search(labels)
        if m:
            try:
                out[m.group(1)] = float(value)
            except ValueError:
                pass
    return out


class Poller:
    """Reads /metrics every `every` seconds and remembers when the victim was seen down."""

    def __init__(self, url, victim, every=0.05):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path or "/metrics"
        self.victim, self.every = victim, every
        self.seen_up = False  # the victim was seen up (1) at least once
        self.metric_seen = False  # some aigate_host_up line was seen at all
        self.down_at = None  # monotonic time of the first 0 after `armed`
        self.armed = None  # the kill's time: a 0 counts only after it
        self.errors = 0
        self.polls = 0
        self.done = False
        self.last_text = ""

    def run(self):
        conn = None
        while not self.done:
            t = now()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=1)
                conn.request("GET", self.path)
                resp = conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
                seen = now()
                self.polls += 1
                self.last_text = text
                up = host_up(text)
                if up:
                    self.metric_seen = True
                v = up.get(self.victim)
                if v == 1:
                    self.seen_up = True
                if v == 0 and self.armed is not None and self.down_at is None:
                    self.down_at = seen
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, self.every - (now() - t)))


class Stream:
    """One streamed request, read line by line; records how it ended."""

    def __init__(self, target, model, idle):
        self.target, self.model, self.idle = target, model, idle
        self.lines = 0
        self.status = None
        self.end = None  # "done", "error line", "cut", "hang", "refused"
        self.detail = ""
        self.ended_at = None
        self.first_line_at = None

    def run(self):
        conn = self.target.connect(self.idle)
        try:
            body = json.dumps({"model": self.model, "prompt": "a long story", "stream": True})
            conn.request("POST", "/api/generate", body=body, headers=self.target.headers)
            resp = conn.getresponse()
            self.status = resp.status
            if resp.status != 200:
                self.end, self.detail = "refused", resp.read()[:120].decode("utf-8", "replace")
                return
            while True:
                line = resp.readline()
                if not line:
                    self.end, self.detail = "cut", "end of body without done:true"
                    return
                self.lines += 1
                if self.first_line_at is None:
                    self.first_line_at = now()
                try:
                    obj = json.loads(line)
                except ValueError:
                    self.end, self.detail = "cut", "a partial line: " + line[:60].decode("utf-8", "replace")
                    return
                if "error" in obj:
                    self.end, self.detail = "error line", str(obj["error"])[:120]
                    return
                if obj.get("done") is True:
                    self.end = "done"
                    return
        except socket.timeout:
            self.end, self.detail = "hang", f"no byte for {self.idle:.0f} s"
        except (OSError, http.client.HTTPException) as e:
            self.end, self.detail = "cut", f"{type(e).__name__}: {e}"[:120]
        finally:
            self.ended_at = now()
            conn.close()


def kill_run(args, target, seq):
    poller = Poller(args.metrics, args.victim)
    threading.Thread(target=poller.run, daemon=True).start()
    replay = Replay(target, seq, args.clients, args.seconds, args.drain, args.timeout)
    replay.start()
    streams = []
    time.sleep(args.streams_at)
    for _ in range(args.streams):
        s = Stream(target, args.stream_model, args.stream_idle)
        s.thread = threading.Thread(target=s.run, daemon=True)
        s.thread.start()
        streams.append(s)
    time.sleep(max(0.0, replay.t0 + args.kill_at - now()))
    victim_up_before = poller.seen_up
    streaming = sum(1 for s in streams if s.first_line_at is not None and s.end is None)
    t_kill = now()
    poller.armed = t_kill
    os.kill(args.victim_pid, signal.SIGKILL)
    replay.join()
    for s in streams:
        s.thread.join(max(0.0, t_kill + args.stream_idle + 5 - now()))
    poller.done = True
    # A request for the model only the dead victim has: SPEC §6 answers 502 (every host
    # that has it is down).
    conn = target.connect(10)
    try:
        body = json.dumps({"model": args.stream_model, "prompt": "after", "stream": False})
        conn.request("POST", "/api/generate", body=body, headers=target.headers)
        resp = conn.getresponse()
        orphan = (resp.status, resp.read()[:120].decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException) as e:
        orphan = (0, f"{type(e).__name__}: {e}")
    finally:
        conn.close()

    kill_rel = t_kill - replay.t0
    down_rel = poller.down_at - replay.t0 if poller.down_at is not None else None
    fields, failed = replay.summary()
    before = [r for r in failed if r[1] < kill_rel]
    if down_rel is None:
        between, after = [r for r in failed if r[1] >= kill_rel], []
    else:
        between = [r for r in failed if kill_rel <= r[1] < down_rel]
        after = [r for r in failed if r[1] >= down_rel]
    emit("kill", {
        "kill_at_s": f"{kill_rel:.2f}",
        "victim_up_before": int(victim_up_before),
        "metric_seen": int(poller.metric_seen),
        "down_after_ms": "-" if down_rel is None else f"{(down_rel - kill_rel) * 1000:.0f}",
        "polls": poller.polls,
        "poll_errors": poller.errors,
        "failed_before_kill": len(before),
        "failed_kill_to_down": len(between),
        "failed_after_down": len(after),
        "streams": len(streams),
        "streaming_at_kill": streaming,
    })
    emit("kill-replay", fields)
    for name, group in (("before_kill", before), ("kill_to_down", between), ("after_down", after)):
        if group:
            emit("kill-failures", {"when": name, "reasons": json.dumps(reasons(group, 5))})
    emit("orphan", {"status": orphan[0], "body": json.dumps(orphan[1])})
    for k, s in enumerate(streams):
        emit("stream", {
            "n": k + 1,
            "status": s.status,
            "lines": s.lines,
            "end": json.dumps(s.end or "still open"),
            "ended_after_kill_ms": "-" if s.ended_at is None else f"{(s.ended_at - t_kill) * 1000:.0f}",
            "detail": json.dumps(s.detail),
        })
    return replay


# ---------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------

def stats(urls):
    total = {"loads": 0, "completed": 0, "rejected": 0, "cancelled": 0}
    for url in urls:
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
        try:
            conn.request("GET", "/fake/stats")
            s = json.loads(conn.getresponse().read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            sys.exit(f"hosts_replay: cannot read {url}/fake/stats: {e}")
        finally:
            conn.close()
        for k in total:
            total[k] += int(s.get(k, 0))
        per_model = ",".join(f"{m}:{n}" for m, n in sorted(s.get("requests", {}).items()))
        emit("host", {"url": url, "loads": s.get("loads"), "completed": s.get("completed"),
                      "rejected": s.get("rejected"), "cancelled": s.get("cancelled"),
                      "max_in_flight": s.get("max_in_flight_seen"), "requests": per_model or "-"})
    emit("hosts", total)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["replay", "kill", "stats"])
    ap.add_argument("--url", action="append", default=[], help="the proxy (stats: each host)")
    ap.add_argument("--key", default="")
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--drain", type=float, default=30)
    ap.add_argument("--timeout", type=float, default=120, help="per request, seconds")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--mix", default="llama3.2:latest:50,qwen2.5:7b:25,mistral:7b:15,gemma2:9b:10")
    ap.add_argument("--predict", default="13-25", help="num_predict range of a request, MIN-MAX")
    ap.add_argument("--out", help="write every request's record here (JSON)")
    ap.add_argument("--label", default="replay", help="the first word of the result line")
    # kill
    ap.add_argument("--metrics", help="the gate's metrics URL")
    ap.add_argument("--victim", default="victim", help="the victim's host name in the metrics")
    ap.add_argument("--victim-pid", type=int)
    ap.add_argument("--kill-at", type=float, default=12)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--streams-at", type=float, default=1)
    ap.add_argument("--stream-model", default="longstream:latest")
    ap.add_argument("--stream-idle", type=float, default=15, help="a stream silent this long hangs")
    args = ap.parse_args()

    if args.mode == "stats":
        stats(args.url)
        return
    if len(args.url) != 1:
        sys.exit("hosts_replay: give one --url")
    lo, _, hi = args.predict.partition("-")
    seq = sequence(args.seed, parse_mix(args.mix), (int(lo), int(hi or lo)))
    target = Target(args.url[0], args.key)
    if args.mode == "replay":
        replay = Replay(target, seq, args.clients, args.seconds, args.drain, args.timeout)
        replay.start()
        replay.join()
        fields, failed = replay.summary()
        emit(args.label, fields)
        if failed:
            emit(args.label + "-failures", {"reasons": json.dumps(reasons(failed, 5))})
    else:
        if not (args.metrics and args.victim_pid):
            sys.exit("hosts_replay: kill needs --metrics and --victim-pid")
        if args.kill_at >= args.seconds:
            sys.exit("hosts_replay: --kill-at must come before the end (--seconds)")
        replay = kill_run(args, target, seq)
    if args.out:
        with open(args.out, "w") as f:
            json.dump([dict(zip(("start", "end", "ok", "model", "status", "error"), r))
                       for r in replay.records], f)


if __name__ == "__main__":
    main()
