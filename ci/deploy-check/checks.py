#!/usr/bin/env python3
"""Static checks for the vargpt-rs deployment files (called by run.sh).

Every check prints one line, `ok    <name>` or `FAIL  <name>: <why>`; run.sh
counts them. The process exits 1 when any check failed.

Subcommands:
  dockerfile                         Dockerfile / .dockerignore structure
  compose                            docker-compose.yml + deploy/ configs
  dashboard [--metrics-url URL]      Grafana dashboard vs. worker metrics
  k8s --name N --file F [--external-secret S ...] [--external-claim C ...]
                                     rendered Helm manifests: Kubernetes
                                     schemas, CRDs and cross-references
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FAILED = 0
PASSED = 0


def ok(name: str) -> None:
    global PASSED
    PASSED += 1
    print(f"ok    {name}", flush=True)


def fail(name: str, why: str) -> None:
    global FAILED
    FAILED += 1
    why = why.strip().replace("\n", "\n        ")
    print(f"FAIL  {name}: {why}", flush=True)


def check(name: str, cond: bool, why: str = "") -> bool:
    if cond:
        ok(name)
    else:
        fail(name, why or "condition not met")
    return bool(cond)


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------
# Shared facts
# --------------------------------------------------------------------------
def helm_env_names() -> dict:
    return load_yaml(ROOT / "helm/vargpt/values.yaml")["envNames"]


def read_worker_metrics(path: Path) -> dict:
    """name -> (type, labels) from deploy/grafana/worker-metrics.txt."""
    metrics = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'name type labels', got {line!r}")
        name, mtype, labels = parts
        if name in metrics:
            raise ValueError(f"{path}:{lineno}: duplicate metric {name}")
        metrics[name] = (mtype, [] if labels == "-" else labels.split(","))
    return metrics


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------
def parse_dockerfile(text: str):
    """[(INSTRUCTION, args, lineno)] with continuations joined and comments dropped."""
    out, buf, start = [], "", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        if not buf:
            start = lineno
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip(), start))
        buf = ""
    return out


def cmd_dockerfile(_args) -> None:
    path = ROOT / "Dockerfile"
    text = path.read_text()
    check("dockerfile: BuildKit syntax directive", text.startswith("# syntax=docker/dockerfile:1"),
          "first line must be '# syntax=docker/dockerfile:1.x' (cache mounts need BuildKit)")
    ins = parse_dockerfile(text)
    first_from = next(i for i, x in enumerate(ins) if x[0] == "FROM")
    global_args = {}
    for instr, args, _ in ins[:first_from]:
        if instr == "ARG":
            k, _, v = args.partition("=")
            global_args[k] = v.strip('"')
    check("dockerfile: ARG VARIANT defaults to cpu before the first FROM", global_args.get("VARIANT") == "cpu",
          f"global ARGs: {global_args}")

    stages = []  # (name, base, [instructions])
    for instr, args, lineno in ins[first_from:]:
        if instr == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.I)
            stages.append({"base": m.group(1), "name": (m.group(2) or "").lower(), "ins": [], "line": lineno})
        else:
            stages[-1]["ins"].append((instr, args, lineno))
    by_name = {s["name"]: s for s in stages}

    def resolve(s: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), s)

    for name in ("builder-cpu", "builder-cuda", "runtime-cpu", "runtime-cuda"):
        check(f"dockerfile: stage {name} exists", name in by_name, f"stages: {list(by_name)}")
    build = next((s for s in stages if s["base"] == "builder-${VARIANT}"), None)
    check("dockerfile: build stage is FROM builder-${VARIANT}", build is not None)
    final = stages[-1]
    check("dockerfile: final stage is FROM runtime-${VARIANT}", final["base"] == "runtime-${VARIANT}",
          f"final stage base is {final['base']}")
    if {"builder-cuda", "runtime-cuda", "builder-cpu", "runtime-cpu"} <= set(by_name):
        bc, rc = resolve(by_name["builder-cuda"]["base"]), resolve(by_name["runtime-cuda"]["base"])
        check("dockerfile: CUDA builder is a -devel image, runtime a -runtime image of the same CUDA/OS",
              bc.startswith("nvidia/cuda:") and "-devel-" in bc and rc.startswith("nvidia/cuda:")
              and "-runtime-" in rc and bc.replace("-devel-", "-runtime-") == rc, f"{bc} vs {rc}")
        b, r = resolve(by_name["builder-cpu"]["base"]), resolve(by_name["runtime-cpu"]["base"])
        deb_b, deb_r = b.rsplit("-", 1)[-1], r.split(":", 1)[-1].split("-")[0]
        check("dockerfile: CPU builder and runtime share the Debian release (glibc)", deb_b == deb_r,
              f"{b} vs {r}")

    if build:
        runs = [a for i, a, _ in build["ins"] if i == "RUN" and "cargo build" in a]
        check("dockerfile: one cargo build RUN in the build stage", len(runs) == 1, f"found {len(runs)}")
        if runs:
            run = runs[0]
            check("dockerfile: cargo build uses cache mounts (registry, git, target)",
                  all(f"target={t}" in run for t in ("/usr/local/cargo/registry", "/usr/local/cargo/git"))
                  and re.search(r"type=cache,[^ ]*target=/src/target", run) is not None, run[:200])
            check("dockerfile: cargo build --release --locked", "--release" in run and "--locked" in run)
            check("dockerfile: cuda variant enables the cuda cargo feature", 'features="cuda' in run)
            check("dockerfile: binaries copied out of the cache-mounted target dir", "/out" in run)
        check("dockerfile: CUDA_COMPUTE_CAP build arg for GPU-less builds",
              any(i == "ARG" and a.startswith("CUDA_COMPUTE_CAP") for i, a, _ in build["ins"]))

    fin = final["ins"]
    fargs = dict(global_args)
    for i, a, _ in fin:
        if i == "ARG" and "=" in a:
            k, _, v = a.partition("=")
            fargs[k] = v.strip('"')
    users = [a for i, a, _ in fin if i == "USER"]
    user = re.sub(r"\$\{(\w+)\}", lambda m: fargs.get(m.group(1), "?"), users[-1]) if users else ""
    uid = user.split(":")[0]
    check("dockerfile: final stage runs as a numeric non-root USER", uid.isdigit() and int(uid) != 0,
          f"USER {user!r} (Kubernetes runAsNonRoot needs a numeric UID)")
    check("dockerfile: chart runs as the image's UID",
          str(load_yaml(ROOT / "helm/vargpt/values.yaml")["worker"]["podSecurityContext"]["runAsUser"]) == uid,
          "helm worker.podSecurityContext.runAsUser differs from the Dockerfile USER")
    hc = [a for i, a, _ in fin if i == "HEALTHCHECK"]
    check("dockerfile: HEALTHCHECK probes /healthz", len(hc) == 1 and "/healthz" in hc[0], str(hc))
    env = {}
    for i, a, _ in fin:
        if i == "ENV":
            for k, v in re.findall(r"(\w+)=(\S+)", a):
                env[k] = v
    check("dockerfile: HF_HOME=/models/hf", env.get("HF_HOME") == "/models/hf", str(env))
    vols = " ".join(a for i, a, _ in fin if i == "VOLUME")
    check("dockerfile: VOLUME /models (model cache)", '"/models"' in vols or vols.strip() == "/models", vols)
    port = env.get("VARGPT_METRICS_ADDR", "").rsplit(":", 1)[-1]
    expose = [a for i, a, _ in fin if i == "EXPOSE"]
    check("dockerfile: EXPOSE matches VARGPT_METRICS_ADDR", port and expose and port in expose[0].split(),
          f"metrics port {port!r}, EXPOSE {expose}")
    cmd = [a for i, a, _ in fin if i == "CMD"]
    check("dockerfile: CMD runs vargpt-worker", bool(cmd) and json.loads(cmd[-1])[0] == "vargpt-worker", str(cmd))
    check("dockerfile: runtime copies the binaries from the build stage",
          any(i == "COPY" and "--from=build" in a for i, a, _ in fin))
    names = set(helm_env_names().values())
    worker_env = [k for k in env if k.startswith("VARGPT_") or k in ("RUST_LOG", "HF_HOME")]
    check("dockerfile: ENV defaults use worker variable names known to helm envNames",
          all(k in names for k in worker_env), f"unknown: {[k for k in worker_env if k not in names]}")
    secretish = [a for i, a, _ in ins if i in ("ENV", "ARG") and
                 re.search(r"(SECRET|PASSWORD|ACCESS_KEY_ID|AMQP_URL|TOKEN)\w*=", a)]
    check("dockerfile: no credentials baked into ENV/ARG", not secretish, str(secretish))

    ignore = [l.strip().strip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    check(".dockerignore: excludes target/ and .git/",
          "**/target" in ignore and ".git" in ignore, str(ignore))
    # Everything cargo reads must reach the build context: the manifests, the
    # lock file and every workspace member / path dependency.
    import fnmatch  # noqa: PLC0415
    import tomllib  # noqa: PLC0415
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock"]
    for pattern in cargo.get("workspace", {}).get("members", []):
        needed += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob(pattern)) if (p / "Cargo.toml").is_file()]
    for dep in cargo.get("workspace", {}).get("dependencies", {}).values():
        if isinstance(dep, dict) and "path" in dep and (ROOT / dep["path"]).is_dir():
            needed.append(str(Path(dep["path"])))
    needed = sorted(set(needed))

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pat) or path.startswith(pat + "/")
                   or fnmatch.fnmatch(path + "/Cargo.toml", pat) for pat in ignore)
    bad = [n for n in needed if ignored(n) or ignored(n + "/Cargo.toml")]
    check(f".dockerignore: keeps Cargo.toml, Cargo.lock and all {len(needed) - 2} workspace crates", not bad,
          f"excluded but needed by cargo: {bad}")

    compose = load_yaml(ROOT / "docker-compose.yml")
    for name, svc in compose["services"].items():
        b = svc.get("build")
        if not b:
            continue
        variant = (b.get("args") or {}).get("VARIANT", "cpu")
        check(f"compose build ({name}): Dockerfile exists and VARIANT is cpu|cuda",
              (ROOT / b.get("context", ".") / b.get("dockerfile", "Dockerfile")).is_file()
              and variant in ("cpu", "cuda"), f"{b}")


# --------------------------------------------------------------------------
# Compose + deploy/ configs
# --------------------------------------------------------------------------
INTERP = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interp(value):
    """Compose interpolation with defaults only (deterministic, ignores the caller's env)."""
    if not isinstance(value, str):
        return value

    def rep(m):
        if m.group(0) == "$$":
            return "$"
        if m.group(2) and m.group(2).endswith("-"):
            return m.group(3)
        return ""
    return INTERP.sub(rep, value)


def depends_list(svc) -> dict:
    d = svc.get("depends_on") or {}
    if isinstance(d, list):
        return {x: {"condition": "service_started"} for x in d}
    return d


def seconds(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(ms|us|h|m|s)", str(v)):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def rabbit_hash_ok(hash_b64: str, password: str) -> bool:
    raw = base64.b64decode(hash_b64)
    salt, digest = raw[:4], raw[4:]
    return hashlib.sha256(salt + password.encode()).digest() == digest


def cmd_compose(_args) -> None:
    path = ROOT / "docker-compose.yml"
    c = load_yaml(path)
    services = c.get("services") or {}
    check("compose: parses and defines services", bool(services))
    required = ["rabbitmq", "minio", "createbucket", "worker", "dispatcher", "prometheus", "grafana"]
    missing = [s for s in required if s not in services]
    check("compose: defines " + ", ".join(required), not missing, f"missing {missing}")
    top_volumes = set((c.get("volumes") or {}).keys())
    top_configs = c.get("configs") or {}
    top_secrets = c.get("secrets") or {}
    one_shot = {n for n, s in services.items() if str(s.get("restart", "")).lower() == "no"}

    for name, svc in services.items():
        deps = depends_list(svc)
        bad = [d for d in deps if d not in services]
        if deps:
            check(f"compose {name}: depends_on targets are defined services", not bad, f"unknown {bad}")
        for dep, spec in deps.items():
            cond = (spec or {}).get("condition", "service_started")
            if dep not in services:
                continue
            target = services[dep]
            if cond == "service_healthy":
                hc = target.get("healthcheck") or {}
                check(f"compose {name}: {dep} (service_healthy) has a healthcheck",
                      bool(hc.get("test")) and not hc.get("disable"), "condition can never be met")
            elif cond == "service_completed_successfully":
                check(f"compose {name}: {dep} (service_completed_successfully) is a one-shot service",
                      dep in one_shot, "set restart: \"no\" on one-shot services")
            else:
                check(f"compose {name}: depends_on {dep} condition is valid", cond == "service_started", cond)
        links = [l.split(":")[0] for l in svc.get("links") or []]
        if links:
            check(f"compose {name}: links target defined services", all(l in services for l in links), str(links))

        vol_problems = []
        for v in svc.get("volumes") or []:
            if isinstance(v, dict):
                vtype, src = v.get("type", "volume"), interp(v.get("source", ""))
            else:
                src = interp(v).split(":")[0]
                vtype = "bind" if src.startswith((".", "/", "~")) else "volume"
            if vtype == "bind":
                if src.startswith(".") and not (ROOT / src).exists():
                    vol_problems.append(f"bind source {src} does not exist")
            elif vtype == "volume" and src and src not in top_volumes:
                vol_problems.append(f"named volume {src} not declared under volumes:")
        if svc.get("volumes"):
            check(f"compose {name}: volumes are declared / bind sources exist", not vol_problems,
                  "; ".join(vol_problems))
        for kind, top in (("configs", top_configs), ("secrets", top_secrets)):
            refs = [r if isinstance(r, str) else r.get("source") for r in svc.get(kind) or []]
            bad = [r for r in refs if r not in top]
            if refs:
                check(f"compose {name}: {kind} are declared at top level", not bad, f"undeclared {bad}")
        long_running = name not in one_shot
        hc = svc.get("healthcheck") or {}
        if long_running:
            check(f"compose {name}: has a healthcheck", bool(hc.get("test")) and not hc.get("disable"))
        image = interp(svc.get("image", ""))
        if image and not svc.get("build"):
            check(f"compose {name}: third-party image is pinned ({image})",
                  ":" in image and not image.endswith(":latest"), "pin a tag")
        for p in svc.get("ports") or []:
            p = interp(str(p))
            check(f"compose {name}: port {p} bound to localhost", p.startswith("127.0.0.1:"),
                  "publish on 127.0.0.1 only")

    for cname, cfg in {**top_configs, **top_secrets}.items():
        f = (cfg or {}).get("file")
        check(f"compose: config/secret {cname} file exists", f is not None and (ROOT / f).is_file(), str(f))

    worker, disp = services.get("worker", {}), services.get("dispatcher", {})
    check("compose: dispatcher is opt-in (profile) and one-shot",
          bool(disp.get("profiles")) and "dispatcher" in one_shot)
    check("compose: worker has no profile (starts by default)", not worker.get("profiles"))
    wenv = {k: interp(str(v)) for k, v in (worker.get("environment") or {}).items()}
    denv = {k: interp(str(v)) for k, v in (disp.get("environment") or {}).items()}
    names = helm_env_names()
    optional = {names["hfToken"]}
    helm_set = set(names.values()) - optional
    missing = sorted(helm_set - set(wenv))
    check("compose/helm: worker env in compose sets every name in helm envNames", not missing,
          f"missing in docker-compose.yml x-vargpt-env: {missing}")
    extra = sorted(k for k in wenv if (k.startswith("VARGPT_") or k.startswith("AWS_")) and k not in names.values())
    check("compose/helm: no worker variable in compose unknown to helm envNames", not extra,
          f"add to helm/vargpt/values.yaml envNames: {extra}")
    check("compose: dispatcher shares the worker environment", denv == wenv)
    amqp = urllib.parse.urlparse(wenv.get(names["amqpUrl"], ""))
    check("compose: broker URL is amqp(s) and points at the rabbitmq service",
          amqp.scheme in ("amqp", "amqps") and amqp.hostname == "rabbitmq", wenv.get(names["amqpUrl"], ""))
    grace = float(wenv.get(names["shutdownGraceSeconds"], "0") or 0)
    check("compose: worker stop_grace_period exceeds VARGPT_SHUTDOWN_GRACE_SECONDS",
          seconds(worker.get("stop_grace_period", "10s")) > grace,
          f"stop_grace_period={worker.get('stop_grace_period')} grace={grace}")
    model = wenv.get(names["model"], "")
    mounts = [interp(v).split(":") for v in worker.get("volumes") or [] if isinstance(v, str)]
    model_mount = next((m for m in mounts if len(m) > 1 and m[1] == model), None)
    check("compose: default model path is mounted into the worker from the repo",
          model_mount is not None and (ROOT / model_mount[0] / "config.json").is_file(),
          f"VARGPT_MODEL={model}, mounts={mounts}")
    check("compose: HF_HOME matches Dockerfile and chart",
          wenv.get(names["hfHome"]) == "/models/hf" ==
          load_yaml(ROOT / "helm/vargpt/values.yaml")["model"]["cache"]["hfHome"])
    metrics_port = wenv.get(names["metricsAddr"], "").rsplit(":", 1)[-1]
    whc = " ".join((worker.get("healthcheck") or {}).get("test", []))
    check("compose: worker healthcheck probes /readyz on the metrics port",
          f":{metrics_port}/readyz" in whc, whc)
    check("compose: worker hardened (read_only, no-new-privileges, cap_drop ALL)",
          worker.get("read_only") is True and "no-new-privileges:true" in (worker.get("security_opt") or [])
          and "ALL" in (worker.get("cap_drop") or []))

    # Prometheus
    prom_cfg_src = next((top_configs[r["source"]]["file"] for r in services["prometheus"].get("configs", [])
                         if isinstance(r, dict) and r.get("target") == "/etc/prometheus/prometheus.yml"), None)
    check("prometheus: config mounted at /etc/prometheus/prometheus.yml", prom_cfg_src is not None)
    prom = load_yaml(ROOT / (prom_cfg_src or "deploy/prometheus/prometheus.yml"))
    jobs = {j["job_name"]: j for j in prom.get("scrape_configs", [])}
    wj = jobs.get("vargpt-worker", {})
    dns = [(n, d.get("port")) for d in wj.get("dns_sd_configs", []) for n in d.get("names", [])]
    check("prometheus: scrapes every worker replica via DNS SD on the metrics port",
          ("worker", int(metrics_port or 0)) in dns, str(dns))
    rj = jobs.get("rabbitmq", {})
    targets = [t for sc in rj.get("static_configs", []) for t in sc.get("targets", [])]
    check("prometheus: scrapes rabbitmq_prometheus on :15692", "rabbitmq:15692" in targets, str(targets))
    hosts = [t.rsplit(":", 1)[0] for j in jobs.values() for sc in j.get("static_configs", []) for t in sc.get("targets", [])]
    hosts += [n for j in jobs.values() for d in j.get("dns_sd_configs", []) for n in d.get("names", [])]
    check("prometheus: every scrape host is a compose service (or localhost)",
          all(h in services or h == "localhost" for h in hosts), str(hosts))

    # RabbitMQ
    rmq = services["rabbitmq"]
    rconfigs = {r["target"]: top_configs[r["source"]]["file"] for r in rmq.get("configs", []) if isinstance(r, dict)}
    plugins = (ROOT / rconfigs.get("/etc/rabbitmq/enabled_plugins", "deploy/rabbitmq/enabled_plugins")).read_text()
    check("rabbitmq: management and prometheus plugins enabled",
          "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins, plugins)
    conf_path = next((f for t, f in rconfigs.items() if t.startswith("/etc/rabbitmq/conf.d/")), None)
    conf = (ROOT / conf_path).read_text() if conf_path else ""
    settings = dict(re.findall(r"^\s*([\w.]+)\s*=\s*(.+?)\s*$", conf, re.M))
    check("rabbitmq: per-object Prometheus metrics (queue depth per queue)",
          settings.get("prometheus.return_per_object_metrics") == "true", str(settings))
    defs_target = settings.get("load_definitions", "")
    check("rabbitmq: load_definitions points at the mounted definitions file", defs_target in rconfigs,
          f"{defs_target} not in {list(rconfigs)}")
    defs = json.loads((ROOT / rconfigs.get(defs_target, "deploy/rabbitmq/definitions.json")).read_text())
    job_queue = wenv.get(names["jobQueue"], "vargpt.jobs")
    prefix = job_queue.rsplit(".", 1)[0]
    predeclared = [q["name"] for q in defs.get("queues", []) if q["name"].startswith(prefix + ".")]
    predeclared += [x["name"] for x in defs.get("exchanges", []) if x["name"].startswith(prefix + ".")]
    check("rabbitmq: definitions leave the worker's queues/exchanges to the worker",
          not predeclared, f"{predeclared}: the worker declares them with its own arguments "
          "(a mismatch fails its declare with PRECONDITION_FAILED)")
    pol = [p["name"] for p in defs.get("policies", []) if re.fullmatch(p["pattern"], job_queue)]
    check("rabbitmq: no policy overrides the job queue's dead-lettering", not pol, str(pol))
    users = {u["name"]: u for u in defs.get("users", [])}
    u = users.get(amqp.username or "")
    check("rabbitmq: broker URL user exists with the URL's password",
          u is not None and rabbit_hash_ok(u["password_hash"], urllib.parse.unquote(amqp.password or "")),
          "definitions.json users do not match VARGPT_AMQP_URL")
    perms = [p for p in defs.get("permissions", []) if p["user"] == amqp.username]
    check("rabbitmq: broker user has permissions on its vhost", bool(perms))

    # Grafana provisioning
    gsvc = services["grafana"]
    gmounts = {interp(v).split(":")[1]: interp(v).split(":")[0] for v in gsvc.get("volumes", []) if isinstance(v, str)}
    ds_dir = gmounts.get("/etc/grafana/provisioning/datasources")
    db_dir = gmounts.get("/etc/grafana/provisioning/dashboards")
    check("grafana: datasource and dashboard provisioning mounted", bool(ds_dir and db_dir), str(gmounts))
    if ds_dir and db_dir:
        ds = [d for f in sorted((ROOT / ds_dir).glob("*.y*ml")) for d in load_yaml(f).get("datasources", [])]
        prom_ds = [d for d in ds if d.get("type") == "prometheus"]
        check("grafana: Prometheus datasource points at the prometheus service",
              any(urllib.parse.urlparse(d.get("url", "")).hostname == "prometheus" for d in prom_ds), str(prom_ds))
        provs = [p for f in sorted((ROOT / db_dir).glob("*.y*ml")) for p in load_yaml(f).get("providers", [])]
        paths = [p.get("options", {}).get("path") for p in provs]
        dash_src = next((src for dst, src in gmounts.items() if dst in paths), None)
        check("grafana: dashboard provider path is where deploy/grafana/dashboards is mounted",
              dash_src is not None and (ROOT / dash_src / "vargpt.json").is_file(), f"{paths} / {gmounts}")
        home = interp(gsvc.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", ""))
        check("grafana: home dashboard path exists in the mounted folder",
              not home or any(home.startswith(dst + "/") and (ROOT / src / home[len(dst) + 1:]).is_file()
                              for dst, src in gmounts.items()), home)


# --------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------
GRAFANA_MACROS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def node_json(mode: str, payload) -> list:
    npm_dir = os.environ.get("VARGPT_NPM_DIR")
    if not npm_dir:
        raise RuntimeError("VARGPT_NPM_DIR is not set (run through run.sh)")
    script = Path(npm_dir) / "node-checks.mjs"
    res = subprocess.run(["node", str(script), mode], input=json.dumps(payload), capture_output=True,
                         text=True, cwd=npm_dir, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"node-checks {mode} failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout)


def iter_panels(panels):
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels") or [])


def family_of(name: str, known: dict):
    """Metric family a queried series name belongs to, or None."""
    if name in known:
        return name
    for suf in HIST_SUFFIXES:
        if name.endswith(suf) and known.get(name[: -len(suf)], ("",))[0] == "histogram":
            return name[: -len(suf)]
    return None


def parse_exposition(text: str):
    samples, types = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, mtype = line.split(None, 3)
            mtype = mtype.strip()
            if mtype == "counter" and not name.endswith("_total"):
                name += "_total"  # OpenMetrics names the counter family without _total
            types[name] = mtype
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, 1)[0])
    return samples, types


def cmd_dashboard(args) -> None:
    main = ROOT / "deploy/grafana/dashboards/vargpt.json"
    copy = ROOT / "helm/vargpt/dashboards/vargpt.json"
    check("dashboard: helm/vargpt/dashboards/vargpt.json is identical to deploy/grafana/dashboards/vargpt.json",
          copy.is_file() and main.read_bytes() == copy.read_bytes(),
          "copy it: cp deploy/grafana/dashboards/vargpt.json helm/vargpt/dashboards/vargpt.json")
    try:
        known = read_worker_metrics(ROOT / "deploy/grafana/worker-metrics.txt")
        ok("worker-metrics.txt: parses (name type labels)")
    except Exception as e:  # noqa: BLE001
        fail("worker-metrics.txt: parses (name type labels)", str(e))
        return
    bad_types = {n: t for n, (t, _) in known.items() if t not in ("counter", "gauge", "histogram")}
    check("worker-metrics.txt: types are counter|gauge|histogram", not bad_types, str(bad_types))
    check("worker-metrics.txt: every name is vargpt_*", all(n.startswith("vargpt_") for n in known))
    check("worker-metrics.txt: counters end in _total",
          all(n.endswith("_total") for n, (t, _) in known.items() if t == "counter"))

    try:
        d = json.loads(main.read_text())
        ok("dashboard: JSON parses")
    except ValueError as e:
        fail("dashboard: JSON parses", str(e))
        return
    check("dashboard: uid, title and schemaVersion set",
          bool(d.get("uid")) and bool(d.get("title")) and isinstance(d.get("schemaVersion"), int))
    check("dashboard: no __inputs (file provisioning and the sidecar cannot fill them)", "__inputs" not in d)
    check("dashboard: id is null (portable between Grafana instances)", d.get("id") is None)
    panels = list(iter_panels(d.get("panels", [])))
    ids = [p.get("id") for p in panels]
    check("dashboard: panel ids are unique", len(ids) == len(set(ids)) and None not in ids, str(ids))
    grid_bad, rects = [], []
    for p in panels:
        g = p.get("gridPos") or {}
        if not all(k in g for k in "xywh") or g["x"] + g["w"] > 24 or g["w"] <= 0 or g["h"] <= 0:
            grid_bad.append(p.get("title"))
            continue
        for q, r in rects:
            if g["x"] < r["x"] + r["w"] and r["x"] < g["x"] + g["w"] and g["y"] < r["y"] + r["h"] and r["y"] < g["y"] + g["h"]:
                grid_bad.append(f"{p.get('title')} overlaps {q}")
        rects.append((p.get("title"), g))
    check("dashboard: panels fit the 24-column grid without overlapping", not grid_bad, str(grid_bad))
    tvars = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    check("dashboard: has a Prometheus datasource variable",
          tvars.get("datasource", {}).get("type") == "datasource" and tvars["datasource"].get("query") == "prometheus")

    exprs, ds_bad = [], []
    for p in panels:
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            ds_bad.append(p.get("title"))
        targets = p.get("targets") or []
        if not targets:
            ds_bad.append(f"{p.get('title')} (no targets)")
        for t in targets:
            if (t.get("datasource") or {}).get("uid") not in (None, "${datasource}"):
                ds_bad.append(f"{p.get('title')}/{t.get('refId')}")
            if not (t.get("expr") or "").strip():
                ds_bad.append(f"{p.get('title')}/{t.get('refId')} (empty expr)")
            else:
                exprs.append((p.get("title"), t["expr"]))
    check("dashboard: every panel queries through ${datasource} with a non-empty expr", not ds_bad, str(ds_bad))
    for name, v in tvars.items():
        if v.get("type") != "query":
            continue
        q = v.get("definition") or (v.get("query") or {}).get("query", "")
        m = re.match(r"label_values\((.*),\s*\w+\)\s*$", q)
        if check(f"dashboard: variable ${name} is label_values(<selector>, <label>)", m is not None, q):
            exprs.append((f"variable {name}", m.group(1)))

    parsed = node_json("promql", [GRAFANA_MACROS.sub("5m", e) for _, e in exprs])
    syntax = [f"{t}: {r['errors'][0]}" for (t, _), r in zip(exprs, parsed) if r["errors"]]
    check(f"dashboard: all {len(exprs)} PromQL expressions parse (Prometheus lezer grammar)", not syntax,
          "\n".join(syntax))
    nameless = [t for (t, _), r in zip(exprs, parsed) if r["namelessSelectors"]]
    check("dashboard: every selector names its metric", not nameless, str(nameless))
    queried = sorted({m for r in parsed for m in r["metrics"]})
    vargpt = [m for m in queried if m.startswith("vargpt_")]
    other = [m for m in queried if not m.startswith(("vargpt_", "rabbitmq_", "DCGM_"))]
    check("dashboard: only vargpt_*, rabbitmq_* and DCGM_* metrics are queried", not other, str(other))
    unknown = [m for m in vargpt if family_of(m, known) is None]
    check(f"dashboard: all {len(vargpt)} vargpt_* series are in deploy/grafana/worker-metrics.txt", not unknown,
          f"not exported by the worker: {unknown}")
    misuse = [m for m in vargpt if family_of(m, known) == m and known[m][0] == "histogram"]
    check("dashboard: histograms are queried through _bucket/_sum/_count", not misuse, str(misuse))

    text = "\n".join(e for _, e in exprs)
    required = {
        "job rate by kind/status": r"by \(kind, status\) \(rate\(vargpt_jobs_total",
        "latency p50/p95/p99": r"histogram_quantile\(0\.5,.*vargpt_job_duration_seconds_bucket[\s\S]*"
                               r"histogram_quantile\(0\.95,[\s\S]*histogram_quantile\(0\.99,",
        "queue depth": r"rabbitmq_queue_messages_ready",
        "in-flight": r"vargpt_jobs_in_flight",
        "batch size": r"vargpt_batch_size_bucket",
        "tokens/s": r"rate\(vargpt_tokens_generated_total",
        "images/s": r"rate\(vargpt_images_generated_total",
        "errors by code": r"by \(code\) \(rate\(vargpt_job_errors_total",
        "dead-lettered": r"vargpt_dead_lettered_total",
        "retries": r"vargpt_job_retries_total",
        "GPU memory": r"DCGM_FI_DEV_FB_USED",
        "model load time": r"vargpt_model_load_seconds",
        "readiness": r"vargpt_ready",
    }
    for what, rx in required.items():
        check(f"dashboard: shows {what}", re.search(rx, text) is not None, f"no query matches /{rx}/")
    unused = sorted(set(known) - {family_of(m, known) for m in vargpt})
    check("dashboard: every exported worker metric appears on some panel", not unused, str(unused))

    url = args.metrics_url
    if not url:
        print("note  METRICS_URL not set: checked against deploy/grafana/worker-metrics.txt only", flush=True)
        return
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (operator-supplied URL)
            body = resp.read().decode()
        ok(f"live: fetched {url}")
    except Exception as e:  # noqa: BLE001
        fail(f"live: fetched {url}", str(e))
        return
    samples, types = parse_exposition(body)
    lenient = os.environ.get("METRICS_LIVE_LENIENT") == "1"
    missing, warned = [], []
    for m in vargpt:
        fam = family_of(m, known) or m
        if m in samples or (m == fam and fam in types):
            continue
        # A labelled metric with no observation yet has no samples at all.
        if lenient and fam in known:
            warned.append(m)
        else:
            missing.append(m)
    for m in warned:
        print(f"warn  live: {m} not exposed yet (no observation); allowed by METRICS_LIVE_LENIENT=1", flush=True)
    check(f"live: every vargpt_* series the dashboard queries is exposed by {url}", not missing,
          f"absent: {missing} (labelled metrics appear only after their first observation: pre-initialise "
          f"their label values in the worker, or set METRICS_LIVE_LENIENT=1)")
    live_fams = {n: t for n, t in types.items() if n.startswith("vargpt_")}
    drift = [f"{n}: worker says {t}, list says {known[n][0]}" for n, t in live_fams.items()
             if n in known and known[n][0] != t]
    drift += [f"{n}: exported but not listed" for n in live_fams if n not in known]
    check("live: worker-metrics.txt matches the worker's # TYPE lines", not drift, "\n".join(drift))


# --------------------------------------------------------------------------
# Rendered Kubernetes manifests
# --------------------------------------------------------------------------
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
# Minimal schemas of our own on top of the CRD validation, which accepts
# unknown fields (the API server would silently prune them).
CRD_FIELDS = {
    "ScaledObject": {
        "spec": {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                 "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "advanced", "triggers", "fallback"},
        "spec.scaleTargetRef": {"apiVersion", "kind", "name", "envSourceContainerName"},
        "spec.advanced": {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"},
        "spec.advanced.horizontalPodAutoscalerConfig": {"behavior", "name"},
        "spec.fallback": {"failureThreshold", "replicas", "behavior"},
        "spec.triggers[]": {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"},
        "spec.triggers[].metadata": {"host", "hostFromEnv", "protocol", "queueName", "mode", "value",
                                     "activationValue", "vhostName", "useRegex", "excludeUnacknowledged",
                                     "pageSize", "operation", "timeout", "unsafeSsl"},
        "spec.triggers[].authenticationRef": {"name", "kind"},
    },
    "TriggerAuthentication": {
        "spec": {"secretTargetRef", "env", "podIdentity", "hashiCorpVault", "azureKeyVault", "awsSecretManager",
                 "gcpSecretManager", "configMapTargetRef", "boundServiceAccountToken", "filePath"},
        "spec.secretTargetRef[]": {"parameter", "name", "key"},
    },
    "ServiceMonitor": {
        "spec": {"attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB", "endpoints",
                 "fallbackScrapeProtocol", "jobLabel", "keepDroppedTargets", "labelLimit", "labelNameLengthLimit",
                 "labelValueLengthLimit", "namespaceSelector", "nativeHistogramBucketLimit",
                 "nativeHistogramMinBucketFactor", "podTargetLabels", "sampleLimit", "scrapeClass",
                 "scrapeClassicHistograms", "scrapeNativeHistograms", "scrapeProtocols", "selector",
                 "selectorMechanism", "serviceDiscoveryRole", "targetLabels", "targetLimit"},
        "spec.endpoints[]": {"authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
                             "filterRunning", "followRedirects", "honorLabels", "honorTimestamps", "interval",
                             "metricRelabelings", "noProxy", "oauth2", "params", "path", "port",
                             "proxyConnectHeader", "proxyFromEnvironment", "proxyUrl", "relabelings", "scheme",
                             "scrapeTimeout", "targetPort", "tlsConfig", "trackTimestampsStaleness"},
        "spec.namespaceSelector": {"any", "matchNames"},
    },
}
REQUIRED_LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                   "helm.sh/chart"]


def select(doc, path: str):
    """Objects at a dotted path; `[]` fans out over lists."""
    nodes = [doc]
    for part in path.split("."):
        nxt = []
        for n in nodes:
            key, fan = (part[:-2], True) if part.endswith("[]") else (part, False)
            v = n.get(key) if isinstance(n, dict) else None
            if v is None:
                continue
            nxt.extend(v if fan and isinstance(v, list) else [v])
        nodes = nxt
    return nodes


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cmd_k8s(args) -> None:
    import kubernetes_validate.utils as kv  # noqa: PLC0415 (only needed here)

    name = args.name
    text = Path(args.file).read_text()
    docs = [x for x in yaml.safe_load_all(text) if x]
    check(f"{name}: renders Kubernetes objects", bool(docs))
    versions = args.kube_version or ["1.27.0", kv.latest_version()]
    crds, unknown = [], []
    for doc in docs:
        kind, api, obj = doc.get("kind"), doc.get("apiVersion"), f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if (api, kind) in CRD_KINDS:
            crds.append(doc)
            problems = []
            for path, allowed in CRD_FIELDS[kind].items():
                for node in select(doc, path):
                    if isinstance(node, dict):
                        problems += [f"{path}.{k}" for k in node if k not in allowed]
            check(f"{name}: {obj} has only known fields ({api})", not problems, f"unknown: {problems}")
            continue
        for ver in versions:
            try:
                kv.validate(doc, ver, strict=True)
                ok(f"{name}: {obj} valid against Kubernetes {kv.major_minor(ver)} schema (strict)")
            except kv.SchemaNotFoundError:
                unknown.append(f"{api} {kind}")
                fail(f"{name}: {obj} valid against Kubernetes {kv.major_minor(ver)} schema (strict)",
                     f"no schema for {api} {kind}: unknown kind, add a schema for it to checks.py")
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"{name}: {obj} valid against Kubernetes {kv.major_minor(ver)} schema (strict)",
                     f"{path}: {e.message}")
    if crds:
        for res in node_json("crds", crds):
            check(f"{name}: {res['name']} valid against the {res['key'].rsplit('/', 1)[0]} CRD schema",
                  not res["errors"], "; ".join(res["errors"]))

    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    label_bad = [f"{d['kind']}/{d['metadata']['name']}: {[l for l in REQUIRED_LABELS if l not in (d['metadata'].get('labels') or {})]}"
                 for d in docs if not all(l in (d["metadata"].get("labels") or {}) for l in REQUIRED_LABELS)]
    check(f"{name}: every object carries the app.kubernetes.io/* labels", not label_bad, "\n".join(label_bad))

    deps = by_kind.get("Deployment", [])
    if not check(f"{name}: exactly one worker Deployment", len(deps) == 1, f"found {len(deps)}"):
        return
    dep = deps[0]
    pod = dep["spec"]["template"]
    plabels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    check(f"{name}: Deployment selector matches its pod labels", matches(dep["spec"]["selector"]["matchLabels"], plabels))
    c = next((x for x in spec["containers"] if x["name"] == "worker"), None)
    if not check(f"{name}: worker container present", c is not None):
        return
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    cms = {s["metadata"]["name"]: s for s in by_kind.get("ConfigMap", [])}
    external = set(args.external_secret or [])
    env = {}
    ref_bad = []
    for ef in c.get("envFrom", []):
        if "configMapRef" in ef:
            cm = cms.get(ef["configMapRef"]["name"])
            if cm is None:
                ref_bad.append(f"ConfigMap {ef['configMapRef']['name']}")
            else:
                env.update(cm.get("data", {}))
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            s = secrets.get(ref["name"])
            if s is None and ref["name"] not in external:
                ref_bad.append(f"Secret {ref['name']} (for {e['name']})")
            elif s is not None and ref["key"] not in (s.get("data") or {}):
                ref_bad.append(f"key {ref['key']} in Secret {ref['name']}")
            env[e["name"]] = f"<secret {ref['name']}/{ref['key']}>"
        else:
            env[e["name"]] = e.get("value")
    check(f"{name}: env ConfigMap/Secret references resolve", not ref_bad, str(ref_bad))
    n = helm_env_names()
    must = [n[k] for k in ("amqpUrl", "jobQueue", "model", "s3Bucket", "awsRegion", "metricsAddr", "prefetch",
                           "maxBatchSize", "tensorParallel", "device", "shutdownGraceSeconds", "logFormat",
                           "logLevel", "hfHome", "s3ForcePathStyle")]
    check(f"{name}: worker gets every required setting as an env var", all(k in env for k in must),
          f"missing {[k for k in must if k not in env]}")
    secret_in_cm = [k for cm in cms.values() for k in (cm.get("data") or {})
                    if k in (n["amqpUrl"], n["awsSecretAccessKey"], n["awsAccessKeyId"], n["hfToken"])]
    check(f"{name}: credentials only come from Secrets", not secret_in_cm, str(secret_in_cm))
    amqp_env = next((e for e in c.get("env", []) if e["name"] == n["amqpUrl"]), {})
    check(f"{name}: broker URL from a secretKeyRef", "secretKeyRef" in (amqp_env.get("valueFrom") or {}))
    for sname, s in secrets.items():
        url = s.get("data", {}).get("amqp-url")
        if url:
            check(f"{name}: Secret {sname} amqp-url is amqp:// or amqps://",
                  base64.b64decode(url).decode().startswith(("amqp://", "amqps://")))

    tp = int(env.get(n["tensorParallel"], "0"))
    device = env.get(n["device"])
    limits = (c.get("resources") or {}).get("limits") or {}
    requests = (c.get("resources") or {}).get("requests") or {}
    gpu = next((v for k, v in limits.items() if k.endswith("/gpu")), None)
    if device == "cuda":
        check(f"{name}: GPU limit equals VARGPT_TP ({tp})", gpu is not None and int(gpu) == tp, f"limit {gpu}")
        tag = c["image"].rsplit(":", 1)[-1] if "@" not in c["image"] else None
        check(f"{name}: CUDA device uses the cuda image (tag *cuda*, or pinned by digest)",
              tag is None or "cuda" in tag, c["image"])
    else:
        check(f"{name}: CPU worker: no GPU limit and VARGPT_TP=1", gpu is None and tp == 1, f"gpu={gpu} tp={tp}")
    if tp > 1:
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        check(f"{name}: tensor parallel pods mount /dev/shm", "/dev/shm" in mounts)
    check(f"{name}: memory request and limit, cpu request set",
          "memory" in limits and "memory" in requests and "cpu" in requests, str(c.get("resources")))
    check(f"{name}: image is pinned (no :latest)", not c["image"].endswith(":latest") and (":" in c["image"] or "@" in c["image"]),
          c["image"])

    psc, csc = spec.get("securityContext") or {}, c.get("securityContext") or {}
    check(f"{name}: runs as non-root", (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True
          and (csc.get("runAsUser", psc.get("runAsUser")) or 0) != 0)
    check(f"{name}: read-only root filesystem, no privilege escalation, all capabilities dropped",
          csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
          and "ALL" in (csc.get("capabilities") or {}).get("drop", []))
    check(f"{name}: seccomp RuntimeDefault", (psc.get("seccompProfile") or csc.get("seccompProfile") or {}).get("type") == "RuntimeDefault")
    check(f"{name}: no service account token mounted", spec.get("automountServiceAccountToken") is False)
    for ic in spec.get("initContainers", []):
        isc = ic.get("securityContext") or {}
        check(f"{name}: init container {ic['name']} is hardened",
              isc.get("readOnlyRootFilesystem") is True and isc.get("allowPrivilegeEscalation") is False)

    grace = int(env.get(n["shutdownGraceSeconds"], "0"))
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    check(f"{name}: terminationGracePeriodSeconds ({tgps}) > VARGPT_SHUTDOWN_GRACE_SECONDS ({grace})", tgps > grace)
    check(f"{name}: preStop drain hook", bool(((c.get("lifecycle") or {}).get("preStop") or {})))
    port = int(str(env.get(n["metricsAddr"], ":0")).rsplit(":", 1)[-1])
    cports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(f"{name}: container port 'metrics' = VARGPT_METRICS_ADDR port ({port})", cports.get("metrics") == port, str(cports))
    probes = {k: (c.get(k) or {}).get("httpGet", {}) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    check(f"{name}: liveness /healthz, readiness /readyz on the metrics port",
          probes["livenessProbe"].get("path") == "/healthz" and probes["readinessProbe"].get("path") == "/readyz"
          and all(p.get("port") in ("metrics", port) for p in probes.values() if p), str(probes))

    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = c.get("volumeMounts", []) + [m for ic in spec.get("initContainers", []) for m in ic.get("volumeMounts", [])]
    check(f"{name}: every volumeMount has a volume", all(m["name"] in vols for m in mounts),
          str([m["name"] for m in mounts if m["name"] not in vols]))
    cache = next((m for m in c.get("volumeMounts", []) if m["name"] == "model-cache"), None)
    check(f"{name}: HF_HOME lies on the model cache volume",
          cache is not None and str(env.get(n["hfHome"], "")).startswith(cache["mountPath"] + "/"))
    check(f"{name}: /tmp is a writable volume (read-only root fs)",
          any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])))
    pvcs = {p["metadata"]["name"] for p in by_kind.get("PersistentVolumeClaim", [])}
    for v in vols.values():
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim:
            check(f"{name}: PVC {claim} is rendered or declared external",
                  claim in pvcs or claim in (args.external_claim or []))

    svcs = by_kind.get("Service", [])
    check(f"{name}: a Service selects the worker pods on port 'metrics'",
          any(matches(s["spec"]["selector"], plabels) and any(p.get("targetPort") == "metrics" for p in s["spec"]["ports"])
              for s in svcs))
    for pdb in by_kind.get("PodDisruptionBudget", []):
        check(f"{name}: PodDisruptionBudget selects the worker pods", matches(pdb["spec"]["selector"]["matchLabels"], plabels))

    sos = by_kind.get("ScaledObject", [])
    check(f"{name}: Deployment leaves replicas to KEDA iff a ScaledObject exists",
          ("replicas" in dep["spec"]) != bool(sos))
    tas = {t["metadata"]["name"]: t for t in by_kind.get("TriggerAuthentication", [])}
    for so in sos:
        ref = so["spec"]["scaleTargetRef"]
        check(f"{name}: ScaledObject targets the worker Deployment",
              ref.get("kind", "Deployment") == "Deployment" and ref["name"] == dep["metadata"]["name"])
        for trig in so["spec"]["triggers"]:
            md = trig.get("metadata", {})
            check(f"{name}: rabbitmq trigger watches VARGPT_JOB_QUEUE",
                  trig["type"] == "rabbitmq" and md.get("queueName") == env.get(n["jobQueue"]), str(md))
            check(f"{name}: trigger carries no credentials inline", "host" not in md and "password" not in md)
            auth = (trig.get("authenticationRef") or {}).get("name")
            ta = tas.get(auth)
            if check(f"{name}: authenticationRef resolves to a TriggerAuthentication", ta is not None, str(auth)):
                for ref in ta["spec"].get("secretTargetRef", []):
                    s = secrets.get(ref["name"])
                    check(f"{name}: TriggerAuthentication secret {ref['name']}/{ref['key']} exists",
                          (s is not None and ref["key"] in s.get("data", {})) or ref["name"] in external)
        lo, hi = so["spec"].get("minReplicaCount", 0), so["spec"].get("maxReplicaCount", 100)
        check(f"{name}: KEDA min <= max replicas", isinstance(lo, int) and isinstance(hi, int) and lo <= hi,
              f"min={lo!r} max={hi!r}")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        target = [s for s in svcs if matches(sel, s["metadata"].get("labels", {}))]
        ports = {p["name"] for s in target for p in s["spec"]["ports"]}
        check(f"{name}: ServiceMonitor selects the metrics Service and its port",
              bool(target) and all(e.get("port") in ports for e in sm["spec"]["endpoints"]), f"{sel} / {ports}")
        check(f"{name}: ServiceMonitor scrapes the release namespace",
              target[0]["metadata"].get("namespace") in sm["spec"].get("namespaceSelector", {}).get("matchNames", [])
              if target else False)
    for cm in cms.values():
        if "vargpt.json" in (cm.get("data") or {}):
            same = cm["data"]["vargpt.json"] == (ROOT / "deploy/grafana/dashboards/vargpt.json").read_text().rstrip("\n")
            check(f"{name}: dashboard ConfigMap carries deploy/grafana/dashboards/vargpt.json", same)
            check(f"{name}: dashboard ConfigMap has the Grafana sidecar label",
                  "grafana_dashboard" in cm["metadata"].get("labels", {}))
    for np_ in by_kind.get("NetworkPolicy", []):
        check(f"{name}: NetworkPolicy selects the worker pods", matches(np_["spec"]["podSelector"]["matchLabels"], plabels))
    tests = [p for p in by_kind.get("Pod", []) if (p["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    for t in tests:
        check(f"{name}: helm test pod is not selected by the worker Service",
              not any(matches(s["spec"]["selector"], t["metadata"].get("labels", {})) for s in svcs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("dockerfile")
    sub.add_parser("compose")
    p = sub.add_parser("dashboard")
    p.add_argument("--metrics-url", default=os.environ.get("METRICS_URL", ""))
    p = sub.add_parser("k8s")
    p.add_argument("--name", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--external-secret", action="append")
    p.add_argument("--external-claim", action="append")
    p.add_argument("--kube-version", action="append")
    args = ap.parse_args()
    try:
        {"dockerfile": cmd_dockerfile, "compose": cmd_compose, "dashboard": cmd_dashboard, "k8s": cmd_k8s}[args.cmd](args)
    except Exception as e:  # noqa: BLE001 - report, never crash silently
        import traceback  # noqa: PLC0415
        fail(f"{args.cmd}: checker crashed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
