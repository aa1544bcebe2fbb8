"""Fuzz the local API of a real node with schemathesis, driven by the node's own OpenAPI document.

    python scripts/fuzz.py                   # make fuzz: every operation, 30 examples each
    python scripts/fuzz.py --quick           # the bounded run inside make test (tests/system/test_fuzz.py)
    python scripts/fuzz.py --dir D --keep    # keep the network (and the reports) in D afterwards

What it does:

1. starts a throwaway network with ``localnet`` (an identity server, two
   suppliers, one customer) so the customer's services are really running;
2. reads ``GET /openapi.json`` from the customer (with its secret), and gives
   schemathesis a copy whose long-poll timeouts are bounded (see
   :data:`BOUNDED`): a long poll may rightly wait as long as it is told to;
3. starts the services of :data:`EXTRA_SERVICES` on it (a customer does not
   supply by default, and customer_* methods would rightly answer 503), then
   runs schemathesis on every operation except those in :data:`LATER` and
   :data:`EXCLUDED` (each with its reason)
   (positive and negative examples, coverage and fuzzing phases) with the
   check ``not_a_server_error``: any 5xx answer is a failure;
4. then runs the operations of :data:`LATER` against the same node, which is
   thrown away anyway: first those that wipe or rotate its identity, then
   ``process_restart`` twice in quick succession and ``process_stop`` twice,
   checking that each answers 200 and the process ends once;
5. stops the network (unless ``--keep``) and prints one line:
   ``fuzz: N operations, M test cases, K server errors`` (exit status 1 if K > 0).

Reports (schemathesis' NDJSON and its console output) go to ``DIR/fuzz-report``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bitnode.localnet.network import LocalNet  # noqa: E402

#: Parameters whose value is how long the call may wait: bounded in the fuzzed copy of the document.
BOUNDED = {"polling_timeout": 2, "wait_timeout": 2, "timeout": 5}

#: Operations that end the process or destroy what every other call works on: run after the rest.
LATER = {
    "process_stop": "ends the process",
    "process_restart": "ends (and restarts) the process",
    "stop": "legacy name of process_stop",
    "restart": "legacy name of process_restart",
    "identity_erase": "removes the identity every other call needs",
    "identity_rotate": "moves the identity to other servers",
}
WIPING = ("identity_rotate", "identity_erase")
#: Operations left out, with the reason.
EXCLUDED = {
    "receive_one_message": "legacy long poll without a timeout parameter: waits 60 s for the next message "
                           "by design (tests/chat covers it)",
}
#: Services a customer node does not run by default that the fuzzed methods need (customer_list ...).
EXTRA_SERVICES = ("service_supplier",)


def bounded_document(document: dict) -> dict:
    """A copy of ``document`` whose waiting parameters have a small maximum (see :data:`BOUNDED`)."""
    document = json.loads(json.dumps(document))
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", ()):
                if _bound(parameter["name"], parameter["schema"]):
                    parameter["required"] = True  # left out, the node's own default (60 s) would apply
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            body_schema = body.get("schema", {})
            for name, schema in body_schema.get("properties", {}).items():
                if _bound(name, schema):
                    body_schema.setdefault("required", []).append(name)
                    operation["requestBody"]["required"] = True
    return document


def _bound(name: str, schema: dict) -> bool:
    if name not in BOUNDED:
        return False
    schema["minimum"] = 0
    schema["maximum"] = BOUNDED[name]
    schema["default"] = min(schema.get("default") or 0, BOUNDED[name])
    if isinstance(schema.get("type"), list):  # a bounded number, never null
        schema["type"] = [kind for kind in schema["type"] if kind != "null"] or "number"
    return True


def operation_ids(document: dict, names: set[str]) -> list[str]:
    """The operationIds (every verb) of the methods ``names``."""
    out = []
    for item in document["paths"].values():
        for operation in item.values():
            if operation["operationId"].split("__")[0] in names:
                out.append(operation["operationId"])
    return out


def http_get(url: str, secret: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """GET ``url`` with the secret header: status and body (errors included)."""
    request = urllib.request.Request(url, headers={"api_secret": secret})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_post(url: str, secret: str, body: dict | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    """POST ``body`` as JSON to ``url`` with the secret header: status and body (errors included)."""
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode("utf-8"), method="POST",
                                     headers={"api_secret": secret, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def run_schemathesis(schema_file: str, base_url: str, secret: str, report_dir: str, include: list[str] | None,
                     exclude: list[str], max_examples: int, max_time: float | None, seed: int | None,
                     phases: str, log) -> tuple[int, int, int, str]:
    """Run the schemathesis CLI; (exit status, operations tested, test cases, server errors, output)."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", schema_file, "--url", base_url,
               "--header", f"api_secret: {secret}", "--checks", "not_a_server_error",
               "--max-examples", str(max_examples), "--phases", phases, "--workers", "1",
               "--request-timeout", "30", "--no-shrink", "--suppress-health-check", "all",
               "--report", "ndjson", "--report-dir", report_dir, "--warnings", "off"]
    if max_time:
        command += ["--max-time", str(int(max_time))]
    if seed is not None:
        command += ["--seed", str(seed)]
    for operation_id in include or ():
        command += ["--include-operation-id", operation_id]
    for operation_id in exclude:
        command += ["--exclude-operation-id", operation_id]
    started = time.monotonic()
    # Run in the report folder: schemathesis keeps a cache (.schemathesis/) where it runs.
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"),
                          cwd=report_dir)
    output = done.stdout + done.stderr
    log(f"schemathesis: exit {done.returncode} in {time.monotonic() - started:.0f} s")
    tested = _number(r"Tested:\s+(\d+)", output)
    cases = _number(r"(\d+) generated", output)
    server_errors = _number(r"Server error: (\d+)", output)
    return done.returncode, tested, cases, server_errors, output


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def end_twice(api_url: str, secret: str, path: str) -> list[str]:
    """Ask for ``path`` twice in quick succession: both answer 200, the second says it is ignored."""
    problems = []
    answers = [http_get(api_url + path, secret) for _ in range(2)]
    for code, body in answers:
        if code != 200:
            problems.append(f"{path}: HTTP {code} {body[:200]!r}")
    if not problems:
        second = json.loads(answers[1][1])["result"]
        if "ignored" not in second:
            problems.append(f"{path}: the second request was not a no-op: {second}")
    return problems


def wait_for(check, timeout: float) -> bool:
    """Poll ``check`` until it answers true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="network directory (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true", help="the bounded run of make test")
    parser.add_argument("--max-examples", type=int, help="test cases per operation (default 30, quick 4)")
    parser.add_argument("--max-time", type=float, help="time budget of the main run, seconds")
    parser.add_argument("--seed", type=int, help="schemathesis seed, to repeat a run")
    parser.add_argument("--keep", action="store_true", help="leave the network running")
    args = parser.parse_args(argv)
    directory = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="bitnode-fuzz-"))
    max_examples = args.max_examples or (4 if args.quick else 30)
    max_time = args.max_time or (150 if args.quick else None)
    phases = "examples,coverage,fuzzing"
    report_dir = os.path.join(directory, "fuzz-report")
    os.makedirs(report_dir, exist_ok=True)

    def log(text: str) -> None:
        print(f"fuzz: {text}", flush=True)

    net = LocalNet(os.path.join(directory, "net"))
    started = time.monotonic()
    data = net.up(suppliers=2, customers=1, key_size=2048, timeout=120)
    target = next(node for node in data["nodes"] if "customer" in node["roles"])
    api_url, secret = target["api_url"].rstrip("/"), target["api_secret"]
    log(f"network up in {time.monotonic() - started:.0f} s; fuzzing {target['name']} at {api_url}")
    problems: list[str] = []
    try:
        code, body = http_get(api_url + "/openapi.json", secret)
        if code != 200:
            raise SystemExit(f"fuzz: GET /openapi.json answered {code}")
        document = json.loads(body)
        schema_file = os.path.join(directory, "openapi-fuzz.json")
        with open(schema_file, "w", encoding="utf-8") as handle:
            json.dump(bounded_document(document), handle)
        later = operation_ids(document, set(LATER))
        excluded = operation_ids(document, set(EXCLUDED))
        for name, reason in LATER.items():
            log(f"run last, on their own: {name} ({reason})")
        for name, reason in EXCLUDED.items():
            log(f"left out: {name} ({reason})")
        for service in EXTRA_SERVICES:
            code, body = http_post(api_url + f"/service/start/{service}/v1", secret)
            if code != 200:
                raise SystemExit(f"fuzz: starting {service} answered {code}: {body[:300]!r}")

        status, tested, cases, errors, output = run_schemathesis(
            schema_file, api_url, secret, report_dir, None, later + excluded, max_examples, max_time, args.seed, phases,
            log)
        with open(os.path.join(report_dir, "main.txt"), "w", encoding="utf-8") as handle:
            handle.write(output)
        if errors or status not in (0,):
            problems.append(f"main run: {errors} server errors (exit {status}); see {report_dir}/main.txt")
            print(output[-6000:])

        wiping = operation_ids(document, set(WIPING))
        status, tested_2, cases_2, errors_2, output = run_schemathesis(
            schema_file, api_url, secret, report_dir, wiping, [], 3, None, args.seed, "examples,coverage", log)
        with open(os.path.join(report_dir, "wiping.txt"), "w", encoding="utf-8") as handle:
            handle.write(output)
        tested, cases, errors = tested + tested_2, cases + cases_2, errors + errors_2
        if errors_2 or status != 0:
            problems.append(f"identity-wiping run: {errors_2} server errors (exit {status}); see {report_dir}/wiping.txt")
            print(output[-4000:])

        pid = target["pid"]
        before = _started_at(api_url, secret)
        problems += end_twice(api_url, secret, "/process/restart/v1")
        if not wait_for(lambda: _started_at(api_url, secret) not in (None, before), 60):
            problems.append("the node did not come back after process_restart")
        problems += end_twice(api_url, secret, "/process/stop/v1")
        if not wait_for(lambda: not _alive(pid), 30):
            problems.append("the node did not stop after process_stop")
        tested += 2
        cases += 4
    finally:
        if not args.keep:
            net.down(kill=False)
    for problem in problems:
        log(f"PROBLEM: {problem}")
    log(f"{tested} operations, {cases} test cases, {errors} server errors, {len(problems)} problems "
        f"in {time.monotonic() - started:.0f} s")
    return 1 if problems else 0


def _started_at(api_url: str, secret: str) -> float | None:
    """When the node's process started (process_info), or None while it does not answer."""
    try:
        code, body = http_get(api_url + "/process/info/v1", secret, 2)
    except OSError:
        return None
    return json.loads(body)["result"]["started"] if code == 200 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


if __name__ == "__main__":
    sys.exit(main())
