#!/usr/bin/env python3
"""bench/queue_load.py: the load client of bench/queue (Python 3.8+ standard library only).

  closed   closed-loop groups of streamed /api/generate requests: each group is one
           caller (one key) keeping a number of requests in flight for --seconds; a
           group may start later (--group NAME:INFLIGHT:START_S:KEY). Per group: the
           wait (time to the first chunk, less the host's first token) and completions.
  open     open-loop Poisson arrivals per class (--class NAME:RATE:KEY[,KEY...]), each
           request on its own connection, for --seconds; requests still waiting then
           may finish for --drain seconds. Per class: completions, waits, and the
           refusals told apart: the host's 503 (its body), the gate's 503 (max-wait,
           with Retry-After), 429 (max-queued).
  rate     closed-loop non-streamed requests as fast as they are answered (when wrk is
           missing): req/s and latency percentiles.
  stats    one host's /fake/stats counters.
  svg      a chart of one group's wait over time, from the --out files of closed runs.

Every result is printed as one `key=value ...` line per measure (what bench/queue reads);
--out FILE also writes every request's record as JSON. While a run goes, --host-stats URL
reads the fake host's /fake/stats every 100 ms: the most requests it held waiting in its
own queue and generating at once.
"""

import argparse
import http.client
import json
import math
import random
import re
import socket
import sys
import threading
import time
import urllib.parse

# A client pauses this long after a failed request before its next one, so that a
# fast-failing proxy is not hammered (nor its failures multiplied).
FAILURE_PAUSE = 0.1
# Ollama's (and the fake's) answer when its own queue is full.
HOST_BUSY = "maximum pending requests exceeded"


def now():
    return time.monotonic()


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(math.ceil(p / 100 * len(sorted_values))) - 1))
    return sorted_values[k]


def fmt_ms(seconds):
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def fmt_svc(seconds, service):
    return "-" if seconds is None else f"{seconds / service:.2f}"


def kv(fields):
    return " ".join(f"{k}={v}" for k, v in fields.items())


def emit(kind, fields):
    print(kind, kv(fields), flush=True)


class Target:
    """Where requests go: host, port, and the request every caller sends."""

    def __init__(self, url, model, tokens, jitter=0.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            sys.exit(f"queue_load: expected an http:// URL, not {url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.model, self.tokens, self.jitter = model, tokens, jitter

    def tokens_for(self, rng):
        """A request's num_predict: --tokens, or drawn within +-jitter of it."""
        if self.jitter <= 0:
            return self.tokens
        lo = max(1, round(self.tokens * (1 - self.jitter)))
        hi = max(lo, round(self.tokens * (1 + self.jitter)))
        return rng.randint(lo, hi)

    def connect(self, timeout):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def headers(self, key):
        h = {"Content-Type": "application/json"}
        if key and key != "-":  # "-": no key (straight to the host)
            h["X-API-Key"] = key
        return h

    def body(self, label, n, tokens, stream=True):
        return json.dumps({
            "model": self.model,
            "prompt": f"{label} request {n}",
            "stream": stream,
            "options": {"num_predict": tokens},
        })


class Record:
    """One request: times relative to the run's start; outcome is one of ok, host503,
    gate503, 429, failed, cut (still running when the run was cut)."""

    __slots__ = ("group", "key", "start", "head", "first", "end", "status", "outcome",
                 "retry_after", "detail")

    def __init__(self, group, key, start):
        self.group, self.key, self.start = group, key, start
        self.head = self.first = self.end = None
        self.status, self.outcome, self.retry_after, self.detail = 0, "failed", None, ""

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


def classify(rec, status, retry_after, data):
    """The outcome of a refused request, from its status, Retry-After and body."""
    text = data[:300].decode("utf-8", "replace")
    rec.status, rec.retry_after, rec.detail = status, retry_after, re.sub(r"\s+", " ", text)[:120]
    if status == 503 and HOST_BUSY in text:
        rec.outcome = "host503"
    elif status == 503:
        rec.outcome = "gate503"
    elif status == 429:
        rec.outcome = "429"
    else:
        rec.outcome = "failed"


def streamed(conn, target, key, label, n, tokens, rec, t0):
    """Sends one streamed request on conn and reads it to its done line; fills rec."""
    body = target.body(label, n, tokens)
    conn.request("POST", "/api/generate", body=body, headers=target.headers(key))
    resp = conn.getresponse()
    rec.head = now() - t0
    if resp.status != 200:
        classify(rec, resp.status, resp.getheader("Retry-After"), resp.read())
        return
    rec.status = 200
    while True:
        line = resp.readline()
        if not line:
            rec.detail = "end of body without done:true"
            return
        if rec.first is None:
            rec.first = now() - t0
        try:
            obj = json.loads(line)
        except ValueError:
            rec.detail = "a partial line"
            return
        if "error" in obj:
            rec.detail = "error line: " + str(obj["error"])[:100]
            return
        if obj.get("done") is True:
            resp.read()  # the chunked body's end, so the connection can be reused
            rec.outcome = "ok"
            return


class HostPoller:
    """Reads the fake host's /fake/stats every `every` seconds while a run goes."""

    def __init__(self, url, every=0.1):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.every = u.hostname, u.port or 80, every
        self.max_queued = self.max_in_flight = 0
        self.polls = self.errors = 0
        self.done = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        conn = None
        while not self.done:
            t = now()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                conn.request("GET", "/fake/stats")
                s = json.loads(conn.getresponse().read())
                self.polls += 1
                self.max_queued = max(self.max_queued, int(s.get("queued", 0)))
                self.max_in_flight = max(self.max_in_flight, int(s.get("in_flight", 0)))
            except (OSError, http.client.HTTPException, ValueError):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, self.every - (now() - t)))

    def fields(self):
        return {"max_queued_seen": self.max_queued, "max_generating_seen": self.max_in_flight,
                "polls": self.polls}


def start_poller(url):
    if not url:
        return None
    p = HostPoller(url)
    p.thread.start()
    return p


class Run:
    """What closed and open runs share: the records, the clock, the connections to cut."""

    def __init__(self, target, timeout):
        self.target, self.timeout = target, timeout
        self.lock = threading.Lock()
        self.records = []
        self.conns = set()
        self.t0 = now()
        self.cut = False

    def add(self, rec):
        with self.lock:
            self.records.append(rec)

    def track(self, conn, on):
        with self.lock:
            if on:
                self.conns.add(conn)
            else:
                self.conns.discard(conn)

    def cut_all(self):
        """Ends every request still running: their records say `cut`."""
        self.cut = True
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def one(self, conn, key, label, n, tokens, rec):
        try:
            streamed(conn, self.target, key, label, n, tokens, rec, self.t0)
            return True
        except (OSError, http.client.HTTPException) as e:
            rec.outcome, rec.detail = "failed", f"{type(e).__name__}: {e}"[:120]
            return False
        finally:
            rec.end = now() - self.t0
            if self.cut and rec.outcome != "ok":
                rec.outcome = "cut"


# ---------------------------------------------------------------------------
# closed: callers keeping N requests in flight
# ---------------------------------------------------------------------------

class Group:
    def __init__(self, spec):
        parts = spec.split(":", 3)
        if len(parts) != 4:
            sys.exit(f"queue_load: bad --group {spec!r} (expected NAME:INFLIGHT:START_S:KEY)")
        self.name, self.inflight, self.start, self.key = parts[0], int(parts[1]), float(parts[2]), parts[3]


def closed(args, target):
    groups = [Group(g) for g in args.group]
    run = Run(target, args.timeout)
    stop_new = threading.Event()
    counter = [0]
    # Requests of the --drain-group groups that have not seen their first chunk yet.
    pending = {}

    def worker(g, index):
        # Each thread's own draws: the same requests on both sides of a comparison.
        rng = random.Random(f"{args.seed}/{g.name}/{index}")
        time.sleep(max(0.0, run.t0 + g.start - now()))
        conn = None
        while not stop_new.is_set() and not run.cut:
            if conn is None:
                conn = target.connect(args.timeout)
                run.track(conn, True)
            with run.lock:
                counter[0] += 1
                n = counter[0]
            rec = Record(g.name, g.key[-6:], now() - run.t0)
            if g.name in args.drain_group:
                with run.lock:
                    pending[n] = rec
            ok = run.one(conn, g.key, g.name, n, target.tokens_for(rng), rec)
            with run.lock:
                pending.pop(n, None)
            run.add(rec)
            if not ok or rec.outcome != "ok":
                run.track(conn, False)
                conn.close()
                conn = None
                if run.cut:
                    break
                time.sleep(FAILURE_PAUSE)
        if conn is not None:
            run.track(conn, False)
            conn.close()

    poller = start_poller(args.host_stats)
    threads = [threading.Thread(target=worker, args=(g, i), daemon=True)
               for g in groups for i in range(g.inflight)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, run.t0 + args.seconds - now()))
    stop_new.set()
    # The measured groups' last requests may see their first chunk (their wait is known),
    # the others keep the host as busy as before meanwhile; then everything is cut.
    deadline = now() + args.drain
    while now() < deadline:
        with run.lock:
            waiting = [r for r in pending.values() if r.first is None]
        if not waiting:
            break
        time.sleep(0.05)
    run.cut_all()
    for t in threads:
        t.join(5)
    if poller:
        poller.done = True

    window = args.seconds
    totals = {}
    for g in groups:
        recs = [r for r in run.records if r.group == g.name]
        done = [r for r in recs if r.outcome == "ok" and r.end <= window and r.end >= args.count_from]
        totals[g.name] = len(done)
    all_done = sum(totals.values())
    unit, service_fields = service_unit(run.records, args)
    emit(f"{args.label}-service", service_fields)
    for g in groups:
        recs = [r for r in run.records if r.group == g.name]
        waits = sorted(max(0.0, r.first - r.start - args.token_s) for r in recs if r.first is not None)
        heads = sorted(r.head - r.start for r in recs if r.head is not None and r.status == 200)
        # How long after the response head the first chunk came: ~0 when the head leaves
        # with the first chunk, the whole wait when the head leaves before a slot is free.
        head_gap = sorted(r.first - r.head for r in recs if r.first is not None and r.head is not None)
        # One request's time on the host: its first chunk to its end, plus the first token.
        service = sorted(r.end - r.first + args.token_s for r in recs if r.outcome == "ok")
        failed = [r for r in recs if r.outcome not in ("ok", "cut")]
        emit(f"{args.label}-{g.name}", {
            "inflight": g.inflight,
            "sent": len(recs),
            "completed": totals[g.name],
            "share_pct": f"{100 * totals[g.name] / all_done:.1f}" if all_done else "-",
            "waits": len(waits),
            "wait_p50_ms": fmt_ms(percentile(waits, 50)),
            "wait_p95_ms": fmt_ms(percentile(waits, 95)),
            "wait_max_ms": fmt_ms(waits[-1] if waits else None),
            "wait_p50_svc": fmt_svc(percentile(waits, 50), unit),
            "wait_p95_svc": fmt_svc(percentile(waits, 95), unit),
            "service_p50_ms": fmt_ms(percentile(service, 50)),
            "head_p50_ms": fmt_ms(percentile(heads, 50)),
            "head_to_first_p50_ms": fmt_ms(percentile(head_gap, 50)),
            "head_to_first_max_ms": fmt_ms(head_gap[-1] if head_gap else None),
            "failed": len(failed),
            "cut": sum(1 for r in recs if r.outcome == "cut"),
        })
        if failed:
            emit(f"{args.label}-{g.name}-failures", {"reasons": json.dumps(reasons(failed))})
    if poller:
        emit(f"{args.label}-host", poller.fields())
    return run


def service_unit(records, args):
    """The run's service time, the unit of waits: the median over its completed
    requests of first chunk to end plus the first token (the nominal one when none
    completed), and the fields that report it."""
    times = sorted(r["end"] - r["first"] + args.token_s if isinstance(r, dict)
                   else r.end - r.first + args.token_s
                   for r in records
                   if (r["outcome"] if isinstance(r, dict) else r.outcome) == "ok")
    unit = percentile(times, 50) or args.service_s
    return unit, {"nominal_ms": fmt_ms(args.service_s), "p50_ms": fmt_ms(percentile(times, 50)),
                  "p5_ms": fmt_ms(percentile(times, 5)), "p95_ms": fmt_ms(percentile(times, 95)),
                  "completed": len(times)}


def reasons(failed, limit=4):
    counts = {}
    for r in failed:
        why = f"{r.outcome} {r.status} {r.detail}".strip()[:100]
        counts[why] = counts.get(why, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{n}x {why}" for why, n in top) or "-"


# ---------------------------------------------------------------------------
# open: Poisson arrivals per class
# ---------------------------------------------------------------------------

class Klass:
    def __init__(self, spec):
        parts = spec.split(":", 2)
        if len(parts) != 3:
            sys.exit(f"queue_load: bad --class {spec!r} (expected NAME:RATE:KEY[,KEY...])")
        self.name, self.rate = parts[0], float(parts[1])
        self.keys = parts[2].split(",")


def open_loop(args, target):
    classes = [Klass(c) for c in args.klass]
    run = Run(target, args.timeout)
    rng = random.Random(args.seed)
    # The whole schedule first (same seed, same arrivals on both sides): (time, class, key).
    arrivals = []
    for c in classes:
        t, k = 0.0, 0
        while c.rate > 0:
            t += rng.expovariate(c.rate)
            if t >= args.seconds:
                break
            arrivals.append((t, c.name, c.keys[k % len(c.keys)]))
            k += 1
    arrivals.sort()
    threads = []

    def request(name, key, n):
        rec = Record(name, key[-6:], now() - run.t0)
        conn = target.connect(args.timeout)
        run.track(conn, True)
        try:
            run.one(conn, key, name, n, target.tokens_for(random.Random(f"{args.seed}/{n}")), rec)
        finally:
            run.track(conn, False)
            conn.close()
            run.add(rec)

    poller = start_poller(args.host_stats)
    for n, (t, name, key) in enumerate(arrivals):
        time.sleep(max(0.0, run.t0 + t - now()))
        th = threading.Thread(target=request, args=(name, key, n), daemon=True)
        th.start()
        threads.append(th)
    deadline = run.t0 + args.seconds + args.drain
    for th in threads:
        th.join(max(0.0, deadline - now()))
    if any(th.is_alive() for th in threads):
        run.cut_all()
        for th in threads:
            th.join(5)
    if poller:
        poller.done = True

    unit, service_fields = service_unit(run.records, args)
    emit(f"{args.label}-service", service_fields)
    if args.high:
        emit(f"{args.label}-order", order_check(run.records, args, args.high, unit, arrivals))
    for c in classes:
        recs = [r for r in run.records if r.group == c.name]
        ok = [r for r in recs if r.outcome == "ok"]
        waits = sorted(max(0.0, r.first - r.start - args.token_s) for r in ok if r.first is not None)
        refused_after = sorted(r.end - r.start for r in recs if r.outcome == "gate503")
        # The longest any request of the class waited before it was served or refused.
        longest = max([w for w in waits] + refused_after, default=None)
        failed = [r for r in recs if r.outcome in ("failed", "cut")]
        emit(f"{args.label}-{c.name}", {
            "rate": f"{c.rate:g}",
            "keys": len(c.keys),
            "sent": len(recs),
            "completed": len(ok),
            "wait_p50_ms": fmt_ms(percentile(waits, 50)),
            "wait_p99_ms": fmt_ms(percentile(waits, 99)),
            "wait_max_ms": fmt_ms(waits[-1] if waits else None),
            "host503": sum(1 for r in recs if r.outcome == "host503"),
            "gate503": len(refused_after),
            "gate503_retry_after": sum(1 for r in recs if r.outcome == "gate503" and r.retry_after),
            "gate503_after_p50_ms": fmt_ms(percentile(refused_after, 50)),
            "gate503_after_max_ms": fmt_ms(refused_after[-1] if refused_after else None),
            "r429": sum(1 for r in recs if r.outcome == "429"),
            "r429_after_max_ms": fmt_ms(max((r.end - r.start for r in recs if r.outcome == "429"),
                                            default=None)),
            "longest_ms": fmt_ms(longest),
            "failed": len(failed),
        })
        if failed:
            emit(f"{args.label}-{c.name}-failures", {"reasons": json.dumps(reasons(failed))})
        gate = [r for r in recs if r.outcome == "gate503"]
        if gate:
            emit(f"{args.label}-{c.name}-gate503", {"body": json.dumps(gate[0].detail),
                                                    "retry_after": gate[0].retry_after or "-"})
        host = [r for r in recs if r.outcome == "host503"]
        if host:
            emit(f"{args.label}-{c.name}-host503", {"body": json.dumps(host[0].detail)})
    if poller:
        emit(f"{args.label}-host", poller.fields())
    return run


def order_check(records, args, high, unit, arrivals):
    """Whether the high class was served first, and a model of what an order that lets
    every request finish could have done for it with the same arrivals.

    inversions: requests of other classes given a slot (their first chunk less one
    token) while a request of `high` had been waiting for more than 10 ms.
    ideal: the high class's waits when every slot that frees goes to its oldest waiting
    request, else to the oldest request of the other classes still within
    --low-max-wait, else stays idle until the next arrival; every request takes `unit`
    (the run's median service time)."""
    tol = 0.010
    hi = [(r.start, r.first - args.token_s) for r in records if r.group == high and r.first is not None]
    others = [r.first - args.token_s for r in records if r.group != high and r.first is not None]
    inversions = sum(1 for d in others if any(s + tol < d < g - tol for s, g in hi))

    arr = sorted((t, name == high) for t, name, _ in arrivals)
    free_at = [0.0] * args.slots
    wait_hi, wait_lo, waits = [], [], []
    ai = 0
    n_hi = sum(1 for _, h in arr if h)
    while len(waits) < n_hi:
        k = min(range(args.slots), key=free_at.__getitem__)
        t = free_at[k]
        while ai < len(arr) and arr[ai][0] <= t:
            (wait_hi if arr[ai][1] else wait_lo).append(arr[ai][0])
            ai += 1
        wait_lo = [a for a in wait_lo if t - a <= args.low_max_wait]
        if wait_hi:
            waits.append(t - wait_hi.pop(0))
            free_at[k] = t + unit
        elif wait_lo:
            wait_lo.pop(0)
            free_at[k] = t + unit
        elif ai < len(arr):
            free_at[k] = arr[ai][0]
        else:
            break
    waits.sort()
    return {"class": high, "inversions": inversions, "dispatched_others": len(others),
            "ideal_p50_ms": fmt_ms(percentile(waits, 50)), "ideal_p99_ms": fmt_ms(percentile(waits, 99)),
            "ideal_max_ms": fmt_ms(waits[-1] if waits else None)}


# ---------------------------------------------------------------------------
# rate: the proxy's full rate, non-streamed (wrk's stand-in)
# ---------------------------------------------------------------------------

def rate(args, target):
    key = args.key
    lat = []
    errors = [0]
    lock = threading.Lock()
    t0 = now()
    end = t0 + args.seconds
    body = target.body("rate", 0, target.tokens, stream=False)

    def worker():
        conn = target.connect(args.timeout)
        mine = []
        while now() < end:
            s = now()
            try:
                conn.request("POST", "/api/generate", body=body, headers=target.headers(key))
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    with lock:
                        errors[0] += 1
                    continue
                mine.append(now() - s)
            except (OSError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                conn.close()
                conn = target.connect(args.timeout)
        conn.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    elapsed = now() - t0
    emit(args.label, {"rps": f"{len(lat) / elapsed:.1f}", "p50_us": f"{percentile(lat, 50) * 1e6:.1f}" if lat else "-",
                      "p99_us": f"{percentile(lat, 99) * 1e6:.1f}" if lat else "-", "errors": errors[0],
                      "requests": len(lat)})
    if errors[0]:
        sys.exit(f"queue_load: {errors[0]} failed requests against {target.host}:{target.port}")


# ---------------------------------------------------------------------------
# stats and svg
# ---------------------------------------------------------------------------

def stats(url):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request("GET", "/fake/stats")
        s = json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError) as e:
        sys.exit(f"queue_load: cannot read {url}/fake/stats: {e}")
    finally:
        conn.close()
    emit("host", {"completed": s.get("completed"), "rejected": s.get("rejected"),
                  "cancelled": s.get("cancelled"), "max_in_flight": s.get("max_in_flight_seen")})


def svg(args):
    """Wait (in service times) of one group's requests over the run, one series per file."""
    series = []
    for spec in args.series:
        name, _, path = spec.partition("=")
        with open(path) as f:
            recs = json.load(f)
        unit, _ = service_unit(recs, args)
        pts = [(r["start"], max(0.0, r["first"] - r["start"] - args.token_s) / unit)
               for r in recs if r["group"] == args.group and r["first"] is not None]
        series.append((name, sorted(pts)))
    w, h, left, right, top, bottom = 720, 360, 60, 20, 40, 50
    xmax = max([p[0] for _, pts in series for p in pts] + [1.0])
    ymax = max([p[1] for _, pts in series for p in pts] + [1.0])
    ymax = math.ceil(ymax * 1.1)
    colors = ["#c0392b", "#2471a3", "#239b56", "#7d3c98"]

    def x(v):
        return left + (w - left - right) * v / xmax

    def y(v):
        return h - bottom - (h - top - bottom) * v / ymax

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{esc(args.title)}</text>']
    step = nice_step(ymax)
    v = 0.0
    while v <= ymax + 1e-9:
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - right}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    xs = nice_step(xmax)
    v = 0.0
    while v <= xmax + 1e-9:
        out.append(f'<text x="{x(v):.1f}" y="{h - bottom + 16}" text-anchor="middle">{v:g}</text>')
        v += xs
    out.append(f'<line x1="{left}" y1="{y(1):.1f}" x2="{w - right}" y2="{y(1):.1f}" '
               f'stroke="#888" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{w - right - 4}" y="{y(1) - 4:.1f}" text-anchor="end" fill="#666">'
               f'one service time</text>')
    out.append(f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>')
    out.append(f'<text x="{(w + left) / 2}" y="{h - 12}" text-anchor="middle">'
               f'request sent at (s into the run)</text>')
    out.append(f'<text x="16" y="{(h - bottom + top) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(h - bottom + top) / 2})">wait (service times)</text>')
    for i, (name, pts) in enumerate(series):
        c = colors[i % len(colors)]
        if pts:
            path = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.5"/>')
            for px, py in pts:
                out.append(f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="2.5" fill="{c}"/>')
        ly = top + 14 + 16 * i
        out.append(f'<rect x="{left + 12}" y="{ly - 9}" width="12" height="3" fill="{c}"/>')
        out.append(f'<text x="{left + 30}" y="{ly - 4}">{esc(name)} ({len(pts)} requests)</text>')
    out.append("</svg>")
    with open(args.svg_out, "w") as f:
        f.write("\n".join(out) + "\n")


def nice_step(span):
    raw = span / 6
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["closed", "open", "rate", "stats", "svg"])
    ap.add_argument("--url", help="the gate, or the host straight")
    ap.add_argument("--label", default="run", help="the first word of the result lines")
    ap.add_argument("--model", default="llama3.2:latest")
    ap.add_argument("--tokens", type=int, default=20, help="num_predict of every request")
    ap.add_argument("--jitter", type=float, default=0,
                    help="num_predict drawn uniformly within this fraction of --tokens")
    ap.add_argument("--service-ms", type=float, default=1000, help="one request's generation time")
    ap.add_argument("--token-ms", type=float, default=0,
                    help="the host's time for its first token, taken off every wait")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--drain", type=float, default=30)
    ap.add_argument("--timeout", type=float, default=300, help="per request, seconds")
    ap.add_argument("--host-stats", help="the fake host's URL, read during the run")
    ap.add_argument("--out", help="write every request's record here (JSON)")
    # closed
    ap.add_argument("--group", action="append", default=[], help="NAME:INFLIGHT:START_S:KEY")
    ap.add_argument("--drain-group", action="append", default=[],
                    help="a group whose last requests may see their first chunk after --seconds")
    ap.add_argument("--count-from", type=float, default=0,
                    help="completions count from this second of the run on")
    # open
    ap.add_argument("--class", dest="klass", action="append", default=[], help="NAME:RATE:KEY[,KEY...]")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--high", help="the class to check for being served first (open)")
    ap.add_argument("--slots", type=int, default=2, help="the host's slots, for --high's ideal")
    ap.add_argument("--low-max-wait", type=float, default=float("inf"),
                    help="seconds the other classes wait at most, for --high's ideal")
    # rate
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--key", default="")
    # svg
    ap.add_argument("--series", action="append", default=[], help="NAME=RECORDS.json")
    ap.add_argument("--group-name", dest="svg_group", default="light")
    ap.add_argument("--title", default="")
    ap.add_argument("--svg-out")
    args = ap.parse_args()
    args.service_s = args.service_ms / 1000
    args.token_s = args.token_ms / 1000

    if args.mode == "svg":
        args.group = args.svg_group
        svg(args)
        return
    if not args.url:
        sys.exit("queue_load: give --url")
    if args.mode == "stats":
        stats(args.url)
        return
    target = Target(args.url, args.model, args.tokens, args.jitter)
    if args.mode == "rate":
        rate(args, target)
        return
    run = closed(args, target) if args.mode == "closed" else open_loop(args, target)
    if args.out:
        with open(args.out, "w") as f:
            json.dump([r.as_dict() for r in run.records], f)


if __name__ == "__main__":
    main()
