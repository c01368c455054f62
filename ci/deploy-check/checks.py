#!/usr/bin/env python3
"""Static checks for the vargpt-rs deployment files (called by run.sh).

Every check prints one line, `ok    <name>` or `FAIL  <name>: <why>`; run.sh
counts them. The process exits 1 when any check failed.

Subcommands:
  dockerfile                         Dockerfile / .dockerignore structure
  compose                            docker-compose.yml + deploy/ configs
  dashboard [--metrics-url URL]      Grafana dashboard vs. worker metrics
  contract [--compose F] [--manifest F --name N] [--dockerfile F]
                                     only the CLI contract: subcommands, flags
                                     and environment variable names set on the
                                     worker / dispatcher vs. their Rust sources
  k8s --name N --file F [--external-secret S ...] [--external-claim C ...]
                                     rendered Helm manifests: Kubernetes
                                     schemas, CRDs and cross-references
"""
from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import json
import os
import re
import shlex
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
# The binaries' configuration contract, read from their Rust sources
# --------------------------------------------------------------------------
# What a deployment may set on a container is what the binary reads: the
# `env = "..."` attributes of its clap arguments (per subcommand), plus a few
# names read by libraries. Unknown variables are silently ignored by clap, so
# a renamed variable would otherwise fail only in production.
WORKER_CRATE = "crates/vargpt-worker"
DISPATCHER_CRATE = "crates/vargpt-dispatcher"
# Read outside the worker's clap arguments: tracing's filter, the hf-hub cache
# and token, the engine's offline switch and cache, the kernels' thread count
# and instruction-set cap.
# AWS_* is the AWS SDK's environment chain (credentials, profile, endpoint...).
WORKER_LIBRARY_ENV = {"RUST_LOG", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "VARGPT_THREADS", "VARGPT_ISA"}
DISPATCHER_LIBRARY_ENV = {"RUST_LOG"}
LIBRARY_ENV_PREFIXES = ("AWS_",)

ENV_ATTR = re.compile(r'\benv\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"')


def _rust_sources(crate: str) -> str:
    files = sorted((ROOT / crate / "src").rglob("*.rs"))
    if not files:
        raise FileNotFoundError(f"no Rust sources under {crate}/src")
    # Drop whole-line comments (doc comments); keep everything else verbatim
    # (string literals such as "amqp://..." contain `//`).
    return "\n".join("\n".join(l for l in f.read_text().splitlines() if not l.lstrip().startswith("//"))
                     for f in files)


def _balanced(text: str, i: int, open_c: str, close_c: str) -> int:
    """Index just past the bracket matching text[i] == open_c (string-aware)."""
    depth, j, n = 0, i, len(text)
    while j < n:
        ch = text[j]
        if ch == '"':
            j += 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
        elif ch == "'" and j + 2 < n and (text[j + 2] == "'" or (text[j + 1] == "\\" and text[j + 3] == "'")):
            j += 2 if text[j + 2] == "'" else 3  # char literal, e.g. short = 'i'
        elif ch == open_c:
            depth += 1
        elif ch == close_c:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise ValueError(f"unbalanced {open_c}{close_c}")


def _items(body: str):
    """[(attrs, decl)] of a struct/enum body: attributes, then `field: Type` or `Variant(...)`."""
    out, attrs, i, n = [], [], 0, len(body)
    while i < n:
        if body[i].isspace() or body[i] == ",":
            i += 1
        elif body.startswith("#[", i):
            end = _balanced(body, i + 1, "[", "]")
            attrs.append(body[i + 2:end - 1])
            i = end
        else:
            depth, j = 0, i
            while j < n and not (body[j] == "," and depth == 0):
                if body[j] in "<([{":
                    depth += 1
                elif body[j] in ">)]}":
                    depth -= 1
                j += 1
            out.append((attrs, body[i:j].strip()))
            attrs, i = [], j + 1
    return out


def _inner_type(ty: str) -> str:
    ty = ty.strip()
    m = re.fullmatch(r"(?:Box|Option)<(.+)>", ty)
    return _inner_type(m.group(1)) if m else ty


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).replace("_", "-").lower()


def rust_cli(crate: str) -> dict:
    """The clap CLI of a crate: binaries, top-level args, subcommands and their env/flags."""
    src = _rust_sources(crate)
    structs, enums = {}, {}
    for m in re.finditer(r"\b(?:pub(?:\([^)]*\))?\s+)?(struct|enum)\s+(\w+)(?:<[^>{]*>)?\s*\{", src):
        end = _balanced(src, m.end() - 1, "{", "}")
        # The derives / attributes just before the item.
        head = src[max(0, m.start() - 600):m.start()]
        head = head[head.rfind(";") + 1:] if ";" in head else head
        head = head[head.rfind("}") + 1:] if "}" in head else head
        (structs if m.group(1) == "struct" else enums)[m.group(2)] = (head, _items(src[m.end():end - 1]))

    def args_of(struct: str, seen=()) -> dict:
        res = {"env": {}, "long": {}, "short": set(), "subcommand": None, "positional": 0}
        if struct not in structs or struct in seen:
            return res
        for attrs, decl in structs[struct][1]:
            fm = re.match(r"(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:\s*(.+)$", decl, re.S)
            if not fm:
                continue
            field, ty = fm.group(1), fm.group(2).strip()
            joined = " ".join(attrs)
            if re.search(r"\bcommand\s*\([^)]*\bflatten\b", joined):
                sub = args_of(_inner_type(ty), seen + (struct,))
                res["env"].update(sub["env"])
                res["long"].update(sub["long"])
                res["short"] |= sub["short"]
                res["positional"] += sub["positional"]
                continue
            if re.search(r"\bcommand\s*\([^)]*\bsubcommand\b", joined):
                res["subcommand"] = _inner_type(ty)
                continue
            named = False
            for a in attrs:
                if not re.match(r"\s*arg\s*\(", a):
                    continue
                lm = re.search(r'\blong\s*=\s*"([^"]+)"', a)
                # A plain (not Option / Vec / bool) field without a default is required.
                required = not re.match(r"(Option|Vec)<", ty) and ty != "bool" \
                    and not re.search(r"\bdefault_value|\brequired\s*=\s*false", a)
                for env in ENV_ATTR.findall(a):
                    res["env"][env] = {"field": field, "attr": a, "required": required,
                                       "flag": (lm.group(1) if lm else _kebab(field)) if lm or "long" in a else None}
                if lm or re.search(r"\blong\b(?!\s*=)", a):
                    flag = lm.group(1) if lm else _kebab(field)
                    takes_value = not (ty == "bool" and "ArgAction::Set" not in a) or "num_args" in a
                    res["long"][flag] = takes_value
                    named = True
                sm = re.search(r"\bshort\s*=\s*'(.)'", a)
                if sm or re.search(r"\bshort\b(?!\s*=)", a):
                    res["short"].add(sm.group(1) if sm else field[0])
                    named = True
            if not named:
                res["positional"] += 1
        return res

    clis = [name for name, (head, _) in structs.items() if re.search(r"derive\([^)]*\bParser\b", head)]
    if len(clis) != 1:
        raise ValueError(f"{crate}: expected one #[derive(Parser)] struct, found {clis}")
    top = args_of(clis[0])
    if not top["subcommand"] or top["subcommand"] not in enums:
        raise ValueError(f"{crate}: {clis[0]} has no #[command(subcommand)] enum")
    subcommands = {}
    for attrs, decl in enums[top["subcommand"]][1]:
        vm = re.match(r"(\w+)\s*(?:\((.*)\))?$", decl, re.S)
        if not vm:
            continue
        nm = re.search(r'\bname\s*=\s*"([^"]+)"', " ".join(a for a in attrs if a.lstrip().startswith("command")))
        name = nm.group(1) if nm else _kebab(vm.group(1))
        subcommands[name] = args_of(_inner_type(vm.group(2))) if vm.group(2) else args_of("")
    import tomllib  # noqa: PLC0415
    cargo = tomllib.loads((ROOT / crate / "Cargo.toml").read_text())
    bins = [b["name"] for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
    all_env = set(ENV_ATTR.findall(src))
    return {"crate": crate, "bins": bins, "top": top, "subcommands": subcommands, "all_env": all_env,
            "features": set((cargo.get("features") or {}).keys())}


def accepted_env(cli: dict, sub: str, library: set) -> set:
    return set(cli["top"]["env"]) | set(cli["subcommands"].get(sub, {}).get("env", {})) | library


def env_default(cli: dict, sub: str, env: str):
    info = cli["subcommands"].get(sub, {}).get("env", {}).get(env) or cli["top"]["env"].get(env)
    m = re.search(r'\bdefault_value(?:_t)?\s*=\s*"?([^",)]+)"?', (info or {}).get("attr", ""))
    return m.group(1).strip() if m else None


def contract_crate(crate: str, library: set) -> dict:
    cli = rust_cli(crate)
    cli["library"] = library
    return cli


_CONTRACTS = {}


def worker_cli() -> dict:
    if "worker" not in _CONTRACTS:
        _CONTRACTS["worker"] = contract_crate(WORKER_CRATE, WORKER_LIBRARY_ENV)
    return _CONTRACTS["worker"]


def dispatcher_cli() -> dict:
    if "dispatcher" not in _CONTRACTS:
        _CONTRACTS["dispatcher"] = contract_crate(DISPATCHER_CRATE, DISPATCHER_LIBRARY_ENV)
    return _CONTRACTS["dispatcher"]


def check_contract_parsed() -> None:
    """The CLI parser saw every `env = "..."` attribute of both crates (else fix rust_cli)."""
    for cli in (worker_cli(), dispatcher_cli()):
        seen = set(cli["top"]["env"]).union(*[set(a["env"]) for a in cli["subcommands"].values()])
        check(f"contract: {cli['crate']}: {len(cli['all_env'])} env attributes, {len(cli['subcommands'])} "
              f"subcommands ({', '.join(sorted(cli['subcommands']))}) parsed",
              cli["subcommands"] and seen == cli["all_env"],
              f"env attributes not reached from the #[derive(Parser)] struct: {sorted(cli['all_env'] - seen)}")


def check_argv(label: str, cli: dict, argv: list, service_sub: str):
    """A container's command + args against the binary's CLI. Returns the subcommand."""
    bins = cli["bins"]
    argv = [str(a) for a in argv or []]
    exe = os.path.basename(argv[0]) if argv else ""
    if not check(f"{label}: runs {'/'.join(bins)}", exe in bins,
                 f"command {argv[:1]} is not a binary of {cli['crate']} ({', '.join(bins)})"):
        return None
    bad, i, top = [], 1, cli["top"]["long"]
    while i < len(argv) and argv[i].startswith("-"):
        name = argv[i][2:].split("=", 1)[0]
        if name not in top:
            bad.append(argv[i])
        elif top[name] and "=" not in argv[i]:
            i += 1
        i += 1
    sub = argv[i] if i < len(argv) else None
    subs = sorted(cli["subcommands"])
    check(f"{label}: subcommand {sub!r} is one {exe} defines ({', '.join(subs)})", sub in cli["subcommands"],
          f"`{exe}` has no subcommand {sub!r}: the Command enum in {cli['crate']}/src defines {subs}")
    check(f"{label}: runs the service, `{exe} {service_sub}`", sub == service_sub,
          f"runs `{' '.join(argv)}`, the deployment needs `{exe} {service_sub}`")
    if sub not in cli["subcommands"]:
        return sub
    spec = cli["subcommands"][sub]
    longs, shorts = {**top, **spec["long"]}, spec["short"]
    rest, j = argv[i + 1:], 0
    while j < len(rest):
        a = rest[j]
        if a == "--":
            break
        if a.startswith("--"):
            name = a[2:].split("=", 1)[0]
            if name not in longs and name not in ("help", "version"):
                bad.append(a)
            elif longs.get(name) and "=" not in a:
                j += 1
        elif a.startswith("-") and len(a) > 1:
            if a[1] not in shorts:
                bad.append(a)
            elif len(a) == 2:
                j += 1
        elif not spec["positional"]:
            bad.append(a)
        j += 1
    hints = []
    for a in bad:
        close = difflib.get_close_matches(a.lstrip("-").split("=", 1)[0], sorted(longs), n=1, cutoff=0.6)
        hints.append(a + (f" (did you mean --{close[0]}?)" if close else ""))
    check(f"{label}: every argument is one `{exe} {sub}` accepts", not bad,
          f"unknown argument(s) {', '.join(hints)}; see `{exe} {sub} --help`")
    return sub


def check_required_env(label: str, cli: dict, sub, env: dict, argv: list) -> None:
    """Arguments `sub` cannot start without (no default, e.g. --model): set as env var or flag."""
    spec = cli["subcommands"].get(sub)
    if not spec:
        return
    need = {e: i["flag"] for e, i in {**cli["top"]["env"], **spec["env"]}.items() if i.get("required")}
    given = {str(a)[2:].split("=", 1)[0] for a in argv if str(a).startswith("--")}
    missing = sorted(e for e, flag in need.items() if not env.get(e) and flag not in given)
    exe = cli["bins"][0]
    check(f"{label}: sets every argument `{exe} {sub}` requires ({', '.join(sorted(need))})", not missing,
          f"missing {missing}: `{exe} {sub}` exits at start without them")


def check_env_names(label: str, cli: dict, sub, names) -> None:
    """Every variable set on a container is one the binary (or a library it uses) reads."""
    exe = cli["bins"][0]
    sub = sub if sub in cli["subcommands"] else None
    ok_names = (set(cli["top"]["env"]) | set(cli["subcommands"][sub]["env"]) if sub else set(cli["all_env"])) \
        | cli["library"]
    names = sorted(set(names))
    unknown = [n for n in names if n not in ok_names and not n.startswith(LIBRARY_ENV_PREFIXES)]
    details = []
    for n in unknown:
        hint = []
        elsewhere = [s for s, a in cli["subcommands"].items() if n in a["env"]]
        if elsewhere:
            hint.append(f"read only by `{exe} {'/'.join(elsewhere)}`")
        close = difflib.get_close_matches(n, sorted(ok_names), n=1, cutoff=0.6)
        if close:
            hint.append(f"did you mean {close[0]}?")
        details.append(n + (f" ({'; '.join(hint)})" if hint else ""))
    check(f"{label}: all {len(names)} environment variables are read by `{exe}{' ' + sub if sub else ''}`",
          not unknown,
          f"{exe} does not read {', '.join(details)}. clap ignores unknown variables, so the setting would be "
          f"silently lost. Accepted: the env = \"...\" attributes in {cli['crate']}/src, "
          f"{', '.join(sorted(cli['library']))} and AWS_*")


def compose_env(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: interp(str(v)) if v is not None else None for k, v in env.items()}


def compose_argv(svc: dict, default) -> list:
    cmd = svc.get("command")
    if cmd is None:
        return list(default or [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def dockerfile_cmd(text: str) -> list:
    cmds = [a for i, a, _ in parse_dockerfile(text) if i == "CMD"]
    if not cmds:
        return []
    try:
        return json.loads(cmds[-1])
    except ValueError:
        return shlex.split(cmds[-1])


def check_compose_contract(c: dict, image_cmd=None) -> None:
    """Worker and dispatcher services of a compose file against the binaries' CLIs."""
    services = c.get("services") or {}
    worker, disp = services.get("worker"), services.get("dispatcher")
    wcli, dcli = worker_cli(), dispatcher_cli()
    wenv = {}
    if check("compose: has a worker service", worker is not None):
        argv = compose_argv(worker, image_cmd)
        sub = check_argv("compose worker", wcli, argv, "serve")
        wenv = compose_env(worker)
        check_env_names("compose worker", wcli, sub, wenv)
        check_required_env("compose worker", wcli, sub, wenv, argv)
    if check("compose: has a dispatcher service", disp is not None):
        sub = check_argv("compose dispatcher", dcli, compose_argv(disp, image_cmd), "run")
        denv = compose_env(disp)
        check_env_names("compose dispatcher", dcli, sub, denv)
        prefix = wenv.get("VARGPT_QUEUE_PREFIX") or env_default(wcli, "serve", "VARGPT_QUEUE_PREFIX")
        check("compose dispatcher: VARGPT_JOB_QUEUE is the worker's job queue ({VARGPT_QUEUE_PREFIX}.jobs)",
              denv.get("VARGPT_JOB_QUEUE") == f"{prefix}.jobs",
              f"VARGPT_JOB_QUEUE={denv.get('VARGPT_JOB_QUEUE')!r}, the worker consumes {prefix}.jobs")
        wurl = urllib.parse.urlparse(wenv.get(helm_env_names()["amqpUrl"]) or "")
        durl = urllib.parse.urlparse(denv.get("VARGPT_AMQP_URL") or "")
        check("compose dispatcher: VARGPT_AMQP_URL points at the worker's broker and vhost",
              (durl.hostname, durl.port, durl.path) == (wurl.hostname, wurl.port, wurl.path) and durl.hostname,
              f"dispatcher {durl.hostname}:{durl.port}{durl.path} vs worker {wurl.hostname}:{wurl.port}{wurl.path}")


def container_env_names(c: dict, cms: dict, secrets: dict):
    """Variable names a rendered container gets: env, envFrom ConfigMaps / Secrets (when rendered)."""
    names, opaque = [e["name"] for e in c.get("env", [])], []
    for ef in c.get("envFrom", []):
        prefix = ef.get("prefix", "")
        for kind, objs in (("configMapRef", cms), ("secretRef", secrets)):
            if kind in ef:
                obj = objs.get(ef[kind]["name"])
                if obj is None:
                    opaque.append(f"{kind} {ef[kind]['name']}")
                else:
                    names += [prefix + k for k in {**(obj.get("data") or {}), **(obj.get("stringData") or {})}]
    return names, opaque


def check_manifest_contract(name: str, docs: list) -> None:
    """The worker container of a rendered chart against `vargpt-worker`'s CLI."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    cms = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
    containers = [c for d in by_kind.get("Deployment", []) for c in d["spec"]["template"]["spec"]["containers"]
                  if c["name"] == "worker"]
    if not check(f"{name}: contract: a worker container is rendered", len(containers) == 1, f"{len(containers)}"):
        return
    c, wcli = containers[0], worker_cli()
    argv = list(c.get("command") or []) + list(c.get("args") or [])
    if not c.get("command"):
        argv = dockerfile_cmd((ROOT / "Dockerfile").read_text())[:1] + list(c.get("args") or [])
    sub = check_argv(f"{name}: worker container", wcli, argv, "serve")
    names, opaque = container_env_names(c, cms, secrets)
    dup = sorted({n for n in names if names.count(n) > 1})
    check(f"{name}: worker container sets each variable once", not dup, f"set twice (which wins?): {dup}")
    check_env_names(f"{name}: worker container", wcli, sub, names)
    rendered = {n: "<set>" for n in names}
    for e in c.get("env", []):
        if "value" in e:
            rendered[e["name"]] = e["value"]
    for ef in c.get("envFrom", []):
        cm = cms.get((ef.get("configMapRef") or {}).get("name"))
        rendered.update({ef.get("prefix", "") + k: v for k, v in ((cm or {}).get("data") or {}).items()})
    check_required_env(f"{name}: worker container", wcli, sub, rendered, argv)
    if opaque:
        print(f"note  {name}: not rendered, names unchecked: {', '.join(opaque)}", flush=True)


def check_dockerfile_contract(text: str) -> None:
    """Dockerfile CMD and runtime ENV against `vargpt-worker`; the cargo features it builds with."""
    wcli = worker_cli()
    check_argv("dockerfile: CMD", wcli, dockerfile_cmd(text), "serve")
    ins = parse_dockerfile(text)
    stage, env = None, {}
    for instr, args, _ in ins:
        if instr == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.I)
            stage = (m.group(1) if m else "").lower()
        elif instr == "ENV" and stage and (stage.startswith("runtime")):
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    # NVIDIA_* are read by the NVIDIA container runtime, not by the worker.
    names = [k for k in env if not k.startswith("NVIDIA_")]
    check_env_names("dockerfile: runtime ENV", wcli, "serve", names)
    addr = env.get("VARGPT_HTTP_ADDR", "")
    check("dockerfile: VARGPT_HTTP_ADDR listens on all interfaces (the worker's default is 127.0.0.1)",
          addr.rsplit(":", 1)[0] in ("0.0.0.0", "[::]"), f"VARGPT_HTTP_ADDR={addr!r}")
    hc = " ".join(a for i, a, _ in ins if i == "HEALTHCHECK")
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", hc))
    check("dockerfile: HEALTHCHECK only uses variables the image sets", used <= set(env),
          f"unset: {sorted(used - set(env))}")

    args = {}
    for instr, a, _ in ins:
        if instr == "ARG" and "=" in a:
            k, _, v = a.partition("=")
            args[k] = v.strip('"')
    import tomllib  # noqa: PLC0415
    members = {}
    for pattern in tomllib.loads((ROOT / "Cargo.toml").read_text()).get("workspace", {}).get("members", []):
        for p in sorted(ROOT.glob(pattern)):
            if (p / "Cargo.toml").is_file():
                members[tomllib.loads((p / "Cargo.toml").read_text())["package"]["name"]] = p
    pkgs = args.get("PACKAGES", "").split()
    check("dockerfile: PACKAGES are workspace packages", bool(pkgs) and all(p in members for p in pkgs),
          f"PACKAGES={pkgs}, workspace: {sorted(members)}")
    bins = set()
    for p in pkgs:
        if p in members:
            t = tomllib.loads((members[p] / "Cargo.toml").read_text())
            bins |= {b["name"] for b in t.get("bin", [])} or {p}
    wanted = args.get("BINARIES", "").split()
    check("dockerfile: BINARIES are built by PACKAGES", bool(wanted) and set(wanted) <= bins,
          f"BINARIES={wanted}, PACKAGES build {sorted(bins)}")
    for b in ("vargpt-worker", "vargpt-dispatcher"):
        check(f"dockerfile: image ships {b}", b in wanted, f"BINARIES={wanted}")
    feats = [f for f in args.get("CUDA_FEATURES", "").split(",") if f]
    problems = []
    for f in feats:
        pkg, _, feat = f.rpartition("/")
        if pkg not in members:
            problems.append(f"{f}: {pkg or '(no package)'} is not a workspace package (write <package>/<feature>)")
            continue
        declared = (tomllib.loads((members[pkg] / "Cargo.toml").read_text()).get("features") or {})
        if feat not in declared:
            problems.append(f"{f}: {members[pkg].relative_to(ROOT)}/Cargo.toml has no feature {feat!r}")
    check("dockerfile: CUDA_FEATURES exist (" + ", ".join(feats) + ")",
          "vargpt-worker/cuda" in feats and not problems,
          "; ".join(problems) or f"CUDA_FEATURES={feats} must include vargpt-worker/cuda")


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
            check("dockerfile: cuda variant builds with CUDA_FEATURES",
                  re.search(r'features="\$\{CUDA_FEATURES\}', run) is not None, run[:300])
            check("dockerfile: cargo build selects PACKAGES (-p per package)",
                  "${PACKAGES}" in run and '-p "${pkg}"' in run, run[:300])
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
    port = env.get("VARGPT_HTTP_ADDR", "").rsplit(":", 1)[-1]
    expose = [a for i, a, _ in fin if i == "EXPOSE"]
    check("dockerfile: EXPOSE matches VARGPT_HTTP_ADDR", port and expose and port in expose[0].split(),
          f"http port {port!r}, EXPOSE {expose}")
    check("dockerfile: runtime copies the binaries from the build stage",
          any(i == "COPY" and "--from=build" in a for i, a, _ in fin))
    # CMD, runtime ENV and cargo features against the worker's sources.
    check_dockerfile_contract(text)
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
    wenv = compose_env(worker)
    names = helm_env_names()
    # The worker's CLI (crates/vargpt-worker/src) and the dispatcher's: subcommands,
    # flags and every environment variable name.
    check_contract_parsed()
    check_compose_contract(c, dockerfile_cmd((ROOT / "Dockerfile").read_text()))
    check_env_names("helm envNames", worker_cli(), "serve", names.values())
    core = ["amqpUrl", "queuePrefix", "model", "tensorParallel", "maxBatch",
            "s3Bucket", "s3Endpoint", "s3PathStyle", "awsRegion", "awsAccessKeyId", "awsSecretAccessKey",
            "httpAddr", "shutdownGraceSecs", "logFormat", "logLevel", "hfHome"]
    missing = sorted(names[k] for k in core if names[k] not in wenv)
    check("compose/helm: worker env in compose sets the core settings named in helm envNames", not missing,
          f"missing in docker-compose.yml x-vargpt-env: {missing}")
    extra = sorted(k for k in wenv if (k.startswith("VARGPT_") or k.startswith("AWS_")) and k not in names.values())
    check("compose/helm: no worker variable in compose unknown to helm envNames", not extra,
          f"add to helm/vargpt/values.yaml envNames: {extra}")
    amqp = urllib.parse.urlparse(wenv.get(names["amqpUrl"], ""))
    check("compose: broker URL is amqp(s) and points at the rabbitmq service",
          amqp.scheme in ("amqp", "amqps") and amqp.hostname == "rabbitmq", wenv.get(names["amqpUrl"], ""))
    grace = float(wenv.get(names["shutdownGraceSecs"], "0") or 0)
    check("compose: worker stop_grace_period exceeds VARGPT_SHUTDOWN_GRACE_SECS",
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
    http_addr = wenv.get(names["httpAddr"], "")
    check("compose: worker VARGPT_HTTP_ADDR listens on all interfaces (the worker's default is 127.0.0.1)",
          http_addr.rsplit(":", 1)[0] in ("0.0.0.0", "[::]"), f"VARGPT_HTTP_ADDR={http_addr!r}")
    metrics_port = http_addr.rsplit(":", 1)[-1]
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
    prefix = wenv.get(names["queuePrefix"]) or env_default(worker_cli(), "serve", "VARGPT_QUEUE_PREFIX")
    job_queue = f"{prefix}.jobs"
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
          f"definitions.json users do not match the worker's {names['amqpUrl']}")
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
    # Queue names follow the worker's default VARGPT_QUEUE_PREFIX: {prefix}.jobs, {prefix}.dead.
    prefix = env_default(worker_cli(), "serve", "VARGPT_QUEUE_PREFIX")
    for var, queue in (("queue", f"{prefix}.jobs"), ("dlq", f"{prefix}.dead")):
        v = tvars.get(var, {})
        defaults = {v.get("query"), (v.get("current") or {}).get("value")} | \
            {o.get("value") for o in v.get("options", []) if o.get("selected")}
        check(f"dashboard: ${var} defaults to the worker's {queue}", defaults == {queue},
              f"${var} defaults: {sorted(map(str, defaults))}")

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
        "prompt tokens/s": r"rate\(vargpt_prompt_tokens_total",
        "time to first token p50/p95/p99": r"histogram_quantile\(0\.5,.*vargpt_time_to_first_token_seconds_bucket[\s\S]*"
                                           r"histogram_quantile\(0\.99,.*vargpt_time_to_first_token_seconds_bucket",
        "time per output token p50/p95/p99": r"histogram_quantile\(0\.5,.*vargpt_time_per_output_token_seconds_bucket[\s\S]*"
                                             r"histogram_quantile\(0\.99,.*vargpt_time_per_output_token_seconds_bucket",
        "GPU memory used / total (worker)": r"vargpt_gpu_memory_used_bytes[\s\S]*vargpt_gpu_memory_total_bytes",
        "GPU utilisation (worker)": r"vargpt_gpu_utilization_ratio",
        "engine alive": r"vargpt_engine_alive",
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
    ("monitoring.coreos.com/v1", "PrometheusRule"),
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
    "PrometheusRule": {
        "spec": {"groups"},
        "spec.groups[]": {"name", "interval", "rules", "limit", "labels", "partial_response_strategy", "query_offset"},
        "spec.groups[].rules[]": {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"},
    },
}
# The alerts the chart's PrometheusRule renders with every alert enabled (issue 17).
REQUIRED_ALERTS = {"VargptJobsDeadLettered", "VargptDeadLetterQueueGrowing", "VargptJobQueueNoConsumers",
                   "VargptQueueWaitHigh", "VargptWorkerNotReady", "VargptEngineDead"}
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
    # The worker's CLI: subcommand, flags and every variable name (crates/vargpt-worker/src).
    check_manifest_contract(name, docs)
    must = [n[k] for k in ("queuePrefix", "model", "s3Bucket", "awsRegion", "httpAddr", "tensorParallel",
                           "maxBatch", "maxBatchTokens", "shutdownGraceSecs", "jobTimeoutSecs",
                           "logFormat", "logLevel", "hfHome", "s3PathStyle")]
    check(f"{name}: worker gets every required setting as an env var", all(k in env for k in must),
          f"missing {[k for k in must if k not in env]}")
    secret_in_cm = [k for cm in cms.values() for k in (cm.get("data") or {})
                    if k in (n["amqpUrl"], n["awsSecretAccessKey"], n["awsAccessKeyId"], n["hfToken"])]
    check(f"{name}: credentials only come from Secrets", not secret_in_cm, str(secret_in_cm))
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: vols.get(m["name"], {}) for m in c.get("volumeMounts", [])}
    for v in vols.values():
        sv = v.get("secret")
        if sv:
            s = secrets.get(sv["secretName"])
            keys = [i["key"] for i in sv.get("items", [])]
            check(f"{name}: secret volume {v['name']} -> Secret {sv['secretName']} {keys} exists",
                  (s is not None and all(k in (s.get("data") or {}) for k in keys)) or sv["secretName"] in external)
    amqp_env = next((e for e in c.get("env", []) if e["name"] == n["amqpUrl"]), None)
    amqp_file = env.get(n["amqpUrlFile"])
    file_vol = next((v for path, v in mounts.items() if amqp_file and amqp_file.startswith(path.rstrip("/") + "/")), {})
    check(f"{name}: broker URL from a Secret ({n['amqpUrl']} secretKeyRef, or {n['amqpUrlFile']} on a Secret volume), "
          "not both",
          (amqp_env is not None) != (amqp_file is not None)
          and ("secretKeyRef" in ((amqp_env or {}).get("valueFrom") or {}) or "secret" in file_vol),
          f"{n['amqpUrl']}={amqp_env} {n['amqpUrlFile']}={amqp_file} volume={file_vol}")
    ca_file = env.get(n["amqpCaFile"])
    if ca_file:
        check(f"{name}: AMQP_CA_FILE lies on a mounted volume",
              any(ca_file.startswith(path.rstrip("/") + "/") for path in mounts), f"{ca_file} not under {list(mounts)}")
    for sname, s in secrets.items():
        url = s.get("data", {}).get("amqp-url")
        if url:
            check(f"{name}: Secret {sname} amqp-url is amqp:// or amqps://",
                  base64.b64decode(url).decode().startswith(("amqp://", "amqps://")))

    tp = int(env.get(n["tensorParallel"], "0"))
    devices = [d for d in str(env.get(n["devices"]) or "").split(",") if d.strip()]
    limits = (c.get("resources") or {}).get("limits") or {}
    requests = (c.get("resources") or {}).get("requests") or {}
    gpu = next((v for k, v in limits.items() if k.endswith("/gpu")), None)
    if gpu is not None:
        check(f"{name}: GPU limit equals VARGPT_TP ({tp})", int(gpu) == tp, f"limit {gpu}")
        # The device plugin numbers a pod's GPUs 0..n-1; without VARGPT_DEVICES
        # (or VARGPT_CUDA_DEVICE) the worker computes on the CPU.
        check(f"{name}: VARGPT_DEVICES lists the pod's {gpu} GPUs (0..{int(gpu) - 1})",
              devices == [str(i) for i in range(int(gpu))], f"VARGPT_DEVICES={env.get(n['devices'])!r}")
        tag = c["image"].rsplit(":", 1)[-1] if "@" not in c["image"] else None
        check(f"{name}: GPU worker uses the cuda image (tag *cuda*, or pinned by digest)",
              tag is None or "cuda" in tag, c["image"])
        conc = int(env.get(n["maxBatch"], "1"))
        check(f"{name}: GPU worker has several jobs in flight ({n['maxBatch']} = {conc}) "
              "for the continuous batcher", conc > 1)
    else:
        check(f"{name}: CPU worker: no GPU limit, VARGPT_TP=1, no VARGPT_DEVICES / VARGPT_CUDA_DEVICE",
              tp == 1 and not devices and "VARGPT_CUDA_DEVICE" not in env, f"tp={tp} devices={devices}")
        tag = c["image"].rsplit(":", 1)[-1] if "@" not in c["image"] else ""
        check(f"{name}: CPU worker does not use the cuda image (it defaults to GPU 0)", "cuda" not in tag, c["image"])
    if tp > 1:
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        check(f"{name}: tensor parallel pods mount /dev/shm", "/dev/shm" in mounts)
    # The published VARGPT (9.28 B parameters): 17.3 GiB of bf16 weights in host RAM on a CPU
    # worker (34.6 GiB in f32) plus KV caches; on GPU pods the weights live on the GPUs.
    model = str(env.get(n["model"], ""))
    mem_limit = quantity_bytes(limits.get("memory", "0")) / 2**30
    if model == PUBLISHED_MODEL:
        dtype = str(env.get(n["dtype"]) or ("bf16" if gpu is not None else "f32"))
        need = 16 if gpu is not None else (48 if dtype == "f32" else 30)
        check(f"{name}: memory limit ({mem_limit:.0f} GiB) holds {PUBLISHED_MODEL} "
              f"({'GPU pod, host side' if gpu is not None else 'CPU, ' + dtype})", mem_limit >= need,
              f"needs >= {need} GiB (helm/vargpt/values.yaml, worker.resources, has the arithmetic)")
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

    grace = int(env.get(n["shutdownGraceSecs"], "0"))
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    check(f"{name}: terminationGracePeriodSeconds ({tgps}) > VARGPT_SHUTDOWN_GRACE_SECS ({grace})", tgps > grace)
    job_timeout = int(env.get(n["jobTimeoutSecs"], "0"))
    check(f"{name}: {n['jobTimeoutSecs']} ({job_timeout}) <= {n['shutdownGraceSecs']} ({grace}): "
          "a job in flight at SIGTERM can finish before the pod is killed", 0 < job_timeout <= grace)
    check(f"{name}: preStop drain hook", bool(((c.get("lifecycle") or {}).get("preStop") or {})))
    http_addr = str(env.get(n["httpAddr"], ":0"))
    port = int(http_addr.rsplit(":", 1)[-1])
    check(f"{name}: VARGPT_HTTP_ADDR listens on all interfaces (the worker's default 127.0.0.1 fails every probe)",
          http_addr.rsplit(":", 1)[0] in ("0.0.0.0", "[::]"), http_addr)
    cports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(f"{name}: container port 'metrics' = VARGPT_HTTP_ADDR port ({port})", cports.get("metrics") == port, str(cports))
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
            check(f"{name}: rabbitmq trigger watches the job queue, {{VARGPT_QUEUE_PREFIX}}.jobs",
                  trig["type"] == "rabbitmq" and md.get("queueName") == f"{env.get(n['queuePrefix'])}.jobs",
                  f"queueName={md.get('queueName')!r}, the worker consumes {env.get(n['queuePrefix'])}.jobs")
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
    for rule in by_kind.get("PrometheusRule", []):
        check_prometheus_rule(name, rule, env.get(n["queuePrefix"]))
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


PUBLISHED_MODEL = "VARGPT-family/VARGPT_LLaVA-v1"


def quantity_bytes(q) -> float:
    """A Kubernetes memory quantity (e.g. 32Gi, 500M, 1e9) in bytes."""
    m = re.fullmatch(r"([0-9.]+(?:[eE][0-9]+)?)([KMGTPE]i?|m|k)?", str(q).strip())
    if not m:
        raise ValueError(f"not a quantity: {q!r}")
    unit = m.group(2) or ""
    mult = {"": 1, "m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}.get(unit)
    if mult is None:
        mult = 1024 ** ("KMGTPE".index(unit[0]) + 1)
    return float(m.group(1)) * mult


def check_prometheus_rule(name: str, rule: dict, prefix: str) -> None:
    """Alert expressions parse, select only metrics that exist, and watch the worker's own queues."""
    rules = [r for g in rule["spec"]["groups"] for r in g.get("rules", [])]
    alerts = {r["alert"] for r in rules if "alert" in r}
    check(f"{name}: PrometheusRule has the worker alerts ({', '.join(sorted(REQUIRED_ALERTS))})",
          REQUIRED_ALERTS <= alerts, f"missing {sorted(REQUIRED_ALERTS - alerts)}")
    parsed = node_json("promql", [r["expr"] for r in rules])
    syntax = [f"{r.get('alert') or r.get('record')}: {p['errors'][0]}" for r, p in zip(rules, parsed) if p["errors"]]
    check(f"{name}: all {len(rules)} alert expressions parse (Prometheus lezer grammar)", not syntax, "\n".join(syntax))
    known = read_worker_metrics(ROOT / "deploy/grafana/worker-metrics.txt")
    queried = sorted({m for p in parsed for m in p["metrics"]})
    unknown = [m for m in queried if not m.startswith("rabbitmq_") and family_of(m, known) is None]
    check(f"{name}: alerts query only worker metrics of worker-metrics.txt and rabbitmq_*", not unknown,
          f"not exported: {unknown}")
    queues = set(re.findall(r'queue="([^"]*)"', "\n".join(r["expr"] for r in rules)))
    check(f"{name}: alerts watch the worker's queues ({prefix}.jobs / {prefix}.dead)",
          queues and queues <= {f"{prefix}.jobs", f"{prefix}.dead"}, str(sorted(queues)))
    bare = [r["alert"] for r in rules if "alert" in r and
            not ((r.get("labels") or {}).get("severity") and (r.get("annotations") or {}).get("summary"))]
    check(f"{name}: every alert has a severity label and a summary", not bare, str(bare))


def cmd_contract(args) -> None:
    """The contract checks alone, on any file (run.sh feeds it broken copies)."""
    if args.dockerfile:
        check_dockerfile_contract(Path(args.dockerfile).read_text())
    if args.compose:
        check_compose_contract(load_yaml(Path(args.compose)), dockerfile_cmd((ROOT / "Dockerfile").read_text()))
    if args.manifest:
        check_manifest_contract(args.name, [x for x in yaml.safe_load_all(Path(args.manifest).read_text()) if x])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("dockerfile")
    sub.add_parser("compose")
    p = sub.add_parser("dashboard")
    p.add_argument("--metrics-url", default=os.environ.get("METRICS_URL", ""))
    p = sub.add_parser("contract", help="only the CLI contract checks (subcommands, flags, env names)")
    p.add_argument("--compose")
    p.add_argument("--manifest")
    p.add_argument("--dockerfile")
    p.add_argument("--name", default="manifest")
    p = sub.add_parser("k8s")
    p.add_argument("--name", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--external-secret", action="append")
    p.add_argument("--external-claim", action="append")
    p.add_argument("--kube-version", action="append")
    args = ap.parse_args()
    try:
        {"dockerfile": cmd_dockerfile, "compose": cmd_compose, "dashboard": cmd_dashboard, "k8s": cmd_k8s,
         "contract": cmd_contract}[args.cmd](args)
    except Exception as e:  # noqa: BLE001 - report, never crash silently
        import traceback  # noqa: PLC0415
        fail(f"{args.cmd}: checker crashed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
