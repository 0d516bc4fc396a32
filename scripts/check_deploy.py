"""The Python half of scripts/check-deploy: checks of the manifests the Helm chart renders, and a runner that starts
the real skein binary with a rendered or example configuration. Called by scripts/check-deploy with a subcommand;
not meant to be run alone (it expects the tools and files that script prepares)."""

import json, os, re, signal, socket, ssl, subprocess, sys, time, tomllib
import urllib.error, urllib.parse, urllib.request
import yaml

def die(msg):
    print(f"check-deploy: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)

def readme_keys(readme):
    """The keys of the README's configuration table: what the broker accepts in skein.toml."""
    keys, inside = set(), False
    for line in open(readme, encoding="utf-8"):
        if line.startswith("| key | default | meaning |"):
            inside = True
        elif inside and not line.startswith("|"):
            break
        elif inside:
            keys.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    if len(keys) < 30:
        die(f"found only {len(keys)} keys in the README's configuration table; has its header changed?")
    return keys

def check_toml_keys(where, text, keys):
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        die(f"{where}: not valid TOML: {e}")
    unknown = sorted(set(data) - keys)
    if unknown:
        die(f"{where}: keys the broker does not know (README configuration table): {', '.join(unknown)}")
    return data

def cmd_render(render, name, alerts, readme, out):
    """Checks one `helm template` output; writes its skein.toml and auth files to out/NAME.* for the binary."""
    docs = [d for d in yaml.safe_load_all(open(render)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    def one(kind, pred=lambda d: True):
        found = [d for d in by_kind.get(kind, []) if pred(d)]
        if len(found) != 1:
            die(f"{name}: expected one {kind}, found {len(found)}")
        return found[0]
    done = []
    cm = one("ConfigMap")
    text = cm["data"]["skein.toml"]
    conf = check_toml_keys(f"{name}: ConfigMap skein.toml", text, readme_keys(readme))
    open(f"{out}/{name}.skein.toml", "w").write(text)
    done.append("skein.toml is TOML with known keys")
    for s in by_kind.get("Secret", []):
        for key, value in (s.get("stringData") or {}).items():
            open(f"{out}/{name}.secret.{key}", "w").write(value)

    sts = one("StatefulSet")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    name_ = sts["metadata"]["name"]
    if spec.get("podManagementPolicy") != "Parallel":
        die(f"{name}: the StatefulSet must start its pods in parallel (podManagementPolicy: Parallel)")
    headless = one("Service", lambda d: d["metadata"]["name"] == spec["serviceName"])
    if headless["spec"].get("clusterIP") != "None" or headless["spec"].get("publishNotReadyAddresses") is not True:
        die(f"{name}: Service {spec['serviceName']} must be headless with publishNotReadyAddresses: true")
    c = next(c for c in pod["containers"] if c["name"] == "skein")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in c and c[probe]["httpGet"]["port"] not in ports:
            die(f"{name}: {probe} names port {c[probe]['httpGet']['port']}, which the container does not have")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        die(f"{name}: the readiness probe must ask /readyz")
    listen = {int(a.rsplit(":", 1)[1]) for k in ("mqtt", "mqtts", "ws", "wss") for a in conf.get(k, [])}
    listen.add(int(conf["http"].rsplit(":", 1)[1]))
    if "cluster" in conf:
        listen.add(int(conf["cluster"].rsplit(":", 1)[1]))
    if listen != set(ports.values()):
        die(f"{name}: container ports {sorted(ports.values())} differ from skein.toml's listeners {sorted(listen)}")
    for svc in by_kind["Service"]:
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in ports:
                die(f"{name}: Service {svc['metadata']['name']} targets port {p['targetPort']}, not in the pod")
    done.append("ports, probes and Services agree")
    args = c["args"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    cfg = args[args.index("--config") + 1]
    if mounts.get(os.path.dirname(cfg)) != "config":
        die(f"{name}: --config {cfg} is not in the ConfigMap's mount")
    if mounts.get(conf["data_dir"]) != "data":
        die(f"{name}: data_dir {conf['data_dir']} is not on the data volume")
    for key in ("password_file", "acl_file", "tls_cert", "tls_key", "tls_client_ca",
                "cluster_tls_cert", "cluster_tls_key", "cluster_tls_ca"):
        if key in conf and os.path.dirname(conf[key]) not in mounts:
            die(f"{name}: {key} = {conf[key]} is on no mounted volume")
    done.append("config, data and secret paths are mounted")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if "cluster" in conf:
        adv = env.get("SKEIN_CLUSTER_ADVERTISE") or die(f"{name}: clustered but no SKEIN_CLUSTER_ADVERTISE")
        join = conf["join"]
        if not 1 <= len(join) <= spec["replicas"]:
            die(f"{name}: {len(join)} seeds for {spec['replicas']} replicas")
        for i, seed in enumerate(join):
            # A seed recognises itself in the list by the exact string it advertises.
            mine = adv.replace("$(POD_NAME)", f"{name_}-{i}")
            if mine != seed:
                die(f"{name}: pod {i} advertises {mine} but the seed list names {seed}")
        if not adv.startswith("$(POD_NAME)." + spec["serviceName"] + "."):
            die(f"{name}: the advertised name {adv} is not under the headless Service")
        done.append(f"{len(join)} seeds, each exactly as that pod advertises itself")
    ann = sts["spec"]["template"]["metadata"].get("annotations", {})
    if "checksum/config" not in ann:
        die(f"{name}: no checksum/config annotation: a changed ConfigMap would not roll the pods")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and csc.get("readOnlyRootFilesystem")
            and csc.get("allowPrivilegeEscalation") is False and "ALL" in csc.get("capabilities", {}).get("drop", [])
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
        die(f"{name}: the pod is not locked down (non-root, read-only root, no capabilities, RuntimeDefault seccomp)")
    if any(h.get("lifecycle", {}).get("preStop") for h in pod["containers"]):
        die(f"{name}: a preStop hook would run on every rolling restart")
    done.append("checksum annotation, security context")
    if "PodDisruptionBudget" in by_kind and one("PodDisruptionBudget")["spec"].get("maxUnavailable") != 1:
        die(f"{name}: the PodDisruptionBudget must allow one pod down at a time")
    if "PrometheusRule" in by_kind:
        rule = one("PrometheusRule")
        want = yaml.safe_load(open(alerts))["groups"]
        if rule["spec"]["groups"] != want:
            die(f"{name}: the PrometheusRule's groups differ from {alerts}")
        done.append("PrometheusRule = deploy/prometheus/alerts.yml")
    if "ServiceMonitor" in by_kind:
        sm = one("ServiceMonitor")
        sel = sm["spec"]["selector"]["matchLabels"]
        if not all(headless["metadata"]["labels"].get(k) == v for k, v in sel.items()):
            die(f"{name}: the ServiceMonitor does not select the headless Service")
        done.append("ServiceMonitor selects the headless Service")
    print(f"    {name}: " + "; ".join(done))

def cmd_examples(readme, *files):
    keys = readme_keys(readme)
    for f in files:
        check_toml_keys(f, open(f).read(), keys)
        print(f"    {f}: TOML with known keys")

def used_metrics(dashboard, alerts):
    text = open(dashboard).read() + open(alerts).read()
    return set(re.findall(r"\b((?:skein|process)_[a-z_]+)\b", text))

def cmd_dashboard(dashboard):
    d = json.load(open(dashboard))
    names = {v["name"]: v for v in d["templating"]["list"]}
    if names.get("datasource", {}).get("type") != "datasource" or "instance" not in names:
        die(f"{dashboard}: needs a datasource variable and an instance variable")
    panels = [p for p in d["panels"] if p["type"] != "row"]
    for p in panels:
        if p.get("datasource", {}).get("uid") != "${datasource}":
            die(f"{dashboard}: panel {p['title']!r} does not use the $datasource variable")
        if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
            die(f"{dashboard}: panel {p['title']!r} has no query")
    ids = [p["id"] for p in d["panels"]]
    if len(ids) != len(set(ids)):
        die(f"{dashboard}: panel ids repeat")
    print(f"    {len(panels)} panels, each with a query on $datasource")

# ---- The binary ----------------------------------------------------------------------------------------------

def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports

def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    die(f"cannot write {v!r} as TOML")

def http_get(port, path, timeout=2):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""

def mqtt_connect(port, user=None, password=None, tls=None):
    """One MQTT 3.1.1 CONNECT, over TLS with an ssl.SSLContext; returns the CONNACK return code."""
    def s(b):
        return len(b).to_bytes(2, "big") + b
    flags = 0x02
    payload = s(b"check-deploy")
    if user is not None:
        flags |= 0x80
        payload += s(user.encode())
    if password is not None:
        flags |= 0x40
        payload += s(password.encode())
    var = s(b"MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big")
    body = var + payload
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        c = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
        c.sendall(bytes([0x10, len(body)]) + body)
        ack = c.recv(4)
    if len(ack) < 4 or ack[0] != 0x20:
        die(f"no CONNACK from 127.0.0.1:{port} (got {ack!r})")
    return ack[3]

def cmd_run(binary, name, toml_path, work, pki, dashboard, alerts, as_uid, prometheus=""):
    """Starts the binary with a configuration moved onto loopback ports and temporary paths, checks it, stops it."""
    conf = tomllib.loads(open(toml_path).read())
    d = f"{work}/run-{name}"
    os.makedirs(d)
    ports = iter(free_ports(8))
    moved = {}
    for k in ("mqtt", "mqtts", "ws", "wss"):
        if k in conf:
            new = []
            for a in conf[k]:
                moved[a] = f"127.0.0.1:{next(ports)}"
                new.append(moved[a])
            conf[k] = new
    http = next(ports)
    conf["http"] = f"127.0.0.1:{http}"
    if "listener_max_connections" in conf:
        conf["listener_max_connections"] = [
            moved[e.rsplit("=", 1)[0]] + "=" + e.rsplit("=", 1)[1] for e in conf["listener_max_connections"]]
    conf["data_dir"] = f"{d}/data"
    secrets = os.path.dirname(toml_path) + "/" + name + ".secret."
    user = None
    if "password_file" in conf:
        src = secrets + os.path.basename(conf["password_file"])
        if not os.path.exists(src):
            # Not in the rendered manifests (an existing Secret, or an example): user dave, password s3cret.
            src = f"{pki}/passwd"
        conf["password_file"] = src
        user = ("dave", "s3cret")
    if "acl_file" in conf:
        src = secrets + os.path.basename(conf["acl_file"])
        conf["acl_file"] = src if os.path.exists(src) else f"{pki}/acl"
    for k, f in (("tls_cert", "server.pem"), ("tls_key", "server.key"), ("tls_client_ca", "ca.pem"),
                 ("cluster_tls_cert", "server.pem"), ("cluster_tls_key", "server.key"), ("cluster_tls_ca", "ca.pem")):
        if k in conf:
            conf[k] = f"{pki}/{f}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEIN_")}
    clustered = "cluster" in conf
    if clustered:
        peer = f"127.0.0.1:{next(ports)}"
        conf["cluster"] = peer
        conf["join"] = [peer]
        if "cluster_advertise" in conf:
            conf["cluster_advertise"] = peer
        # As the chart passes it: the environment, per pod.
        env["SKEIN_CLUSTER_ADVERTISE"] = peer
    path = f"{d}/skein.toml"
    with open(path, "w") as f:
        for k, v in conf.items():
            f.write(f"{k} = {toml_value(v)}\n")
    cmd = [binary, "serve", "--config", path]
    run(name, cmd, env, d, http, clustered, conf, user, dashboard, alerts, as_uid, prometheus)

def cmd_run_image_cmd(binary, dockerfile, work, dashboard, alerts, as_uid):
    """The Dockerfile's default CMD, on loopback ports and a temporary data dir, as the image's non-root user."""
    text = open(dockerfile).read()
    m = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M) or die(f"{dockerfile}: no CMD [...] line")
    args = json.loads(m.group(1))
    m = re.search(r"^USER\s+(\d+):(\d+)\s*$", text, re.M) or die(f"{dockerfile}: no numeric USER uid:gid")
    uid = f"{m.group(1)}:{m.group(2)}"
    d = f"{work}/run-image-cmd"
    os.makedirs(f"{d}/data")
    ports = iter(free_ports(4))
    http = None
    out = []
    for a in args:
        if re.fullmatch(r"0\.0\.0\.0:\d+", a):
            port = next(ports)
            if a.endswith(":8080"):
                http = port
            a = f"127.0.0.1:{port}"
        elif a == "/var/lib/skein":
            a = f"{d}/data"
        out.append(a)
    http or die(f"{dockerfile}: the CMD has no HTTP listener on 0.0.0.0:8080 for the probes")
    if uid != "10001:10001":
        die(f"{dockerfile}: USER {uid}, but the chart's securityContext runs as 10001:10001")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEIN_")}
    conf = {"mqtt": [x for x in out if x.startswith("127.0.0.1:") and not x.endswith(f":{http}")]}
    run("Dockerfile CMD", [binary] + out, env, d, http, False, conf, None, dashboard, alerts, as_uid)

def prom_query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(port, url.split(str(port), 1)[1], timeout=5)
    reply = json.loads(body) if body.startswith("{") else {}
    if reply.get("status") != "success":
        die(f"Prometheus refused the query {expr!r}: {reply.get('error', status)}")
    return reply["data"]["result"]

def scrape_with_prometheus(prometheus, http, d, dashboard, alerts):
    """A real Prometheus scrapes the node with the alert rules loaded; every dashboard panel must show data and
    every rule must evaluate, none of them pending or firing on this healthy node."""
    pd = f"{d}/prometheus"
    os.makedirs(pd)
    web = free_ports(1)[0]
    with open(f"{pd}/prometheus.yml", "w") as f:
        f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                f"rule_files: [{json.dumps(os.path.abspath(alerts))}]\n"
                "scrape_configs:\n"
                f"  - job_name: skein\n    static_configs: [{{targets: ['127.0.0.1:{http}']}}]\n")
    log = open(f"{pd}/log", "w")
    prom = subprocess.Popen([prometheus, f"--config.file={pd}/prometheus.yml", f"--storage.tsdb.path={pd}/data",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if prom.poll() is not None:
                die(f"prometheus exited with {prom.returncode}; its log is {pd}/log")
            if http_get(web, "/-/ready")[0] == 200:
                # rate() over [1m] needs two samples, the rules two evaluations.
                if any(r["value"][1] == "1" for r in prom_query(web, 'up{job="skein"}')):
                    time.sleep(3)
                    break
            if time.monotonic() > deadline:
                die(f"prometheus did not scrape the node within 30 s; its log is {pd}/log")
            time.sleep(0.2)
        board = json.load(open(dashboard))
        subst = {"$__rate_interval": "1m", "$job": "skein", "$instance": ".*"}
        panels = [p for p in board["panels"] if p["type"] != "row"]
        for p in panels:
            results = []
            for t in p["targets"]:
                expr = t["expr"]
                for k, v in subst.items():
                    expr = expr.replace(k, v)
                results.append(prom_query(web, expr))
            if not any(results):
                die(f"dashboard panel {p['title']!r} shows no data from a live node: "
                    + "; ".join(t["expr"] for t in p["targets"]))
        reply = json.loads(http_get(web, "/api/v1/rules", timeout=5)[1])
        rules = [r for g in reply["data"]["groups"] for r in g["rules"]]
        for r in rules:
            if r.get("health") != "ok":
                die(f"alert {r['name']} does not evaluate: {r.get('lastError')}")
            if r.get("state") != "inactive":
                die(f"alert {r['name']} is {r['state']} on a healthy node")
        return f"Prometheus: all {len(panels)} panels show data, {len(rules)} rules evaluate, none active"
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()

def run(name, cmd, env, d, http, clustered, conf, user, dashboard, alerts, as_uid, prometheus=""):
    if as_uid == "yes":
        for root, dirs, files in os.walk(d):
            for x in [root] + [os.path.join(root, f) for f in files]:
                os.chown(x, 10001, 10001)
        cmd = ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups"] + cmd
        name += " (uid 10001)"
    log = open(f"{d}/log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=d)
    def tail():
        return "\n".join(open(f"{d}/log").read().splitlines()[-15:])
    def gone(what):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        die(f"{name}: {what}\n--- last lines of its log ({d}/log):\n{tail()}")
    try:
        def wait_for(path, seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    gone(f"skein exited with {proc.returncode} before {path} answered 200")
                status, _ = http_get(http, path)
                if status == 200:
                    return
                time.sleep(0.1)
            gone(f"{path} did not answer 200 within {seconds} s")
        wait_for("/healthz", 30)
        wait_for("/readyz", 30)
        done = ["/healthz and /readyz answer 200"]
        mqtt = int(conf["mqtt"][0].rsplit(":", 1)[1])
        anonymous = conf.get("allow_anonymous", False)
        code = mqtt_connect(mqtt)
        if (code == 0) != bool(anonymous):
            gone(f"an anonymous CONNECT got return code {code} with allow_anonymous = {anonymous}")
        done.append("anonymous clients " + ("accepted" if anonymous else "refused"))
        if user:
            code = mqtt_connect(mqtt, *user)
            if code != 0:
                gone(f"CONNECT as {user[0]} with the password file got return code {code}")
            done.append(f"{user[0]} logs in with the password file")
        if conf.get("mqtts"):
            # The TLS listener with the test CA, and a client certificate where the chart asks for one.
            ctx = ssl.create_default_context(cafile=os.path.dirname(conf["tls_cert"]) + "/ca.pem")
            if "tls_client_ca" in conf:
                ctx.load_cert_chain(conf["tls_cert"], conf["tls_key"])
            port = int(conf["mqtts"][0].rsplit(":", 1)[1])
            code = mqtt_connect(port, *(user or (None, None)), tls=ctx)
            if (code == 0) != bool(user or anonymous):
                gone(f"CONNECT over TLS got return code {code}")
            done.append("MQTT over TLS" + (" with a client certificate" if "tls_client_ca" in conf else ""))
        status, text = http_get(http, "/metrics")
        if status != 200:
            gone(f"/metrics answered {status}")
        exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", text, re.M))
        want = used_metrics(dashboard, alerts)
        if not clustered:
            want = {m for m in want if not m.startswith("skein_cluster_")}
        absent = sorted(want - exported)
        if absent:
            gone(f"/metrics lacks metrics the dashboard or alerts use: {', '.join(absent)}")
        if not re.search(r"^skein_ready 1\b", text, re.M):
            gone("/metrics does not say skein_ready 1 while /readyz answers 200")
        done.append(f"/metrics has all {len(want)} metrics the dashboard and alerts use")
        if prometheus and status == 200:
            done.append(scrape_with_prometheus(prometheus, http, d, dashboard, alerts))
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            gone("did not stop within 25 s of SIGTERM")
        if code != 0:
            gone(f"exited with {code} after SIGTERM")
        done.append("stops cleanly on SIGTERM")
        print(f"    {name}: " + "; ".join(done))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

cmds = {"render": cmd_render, "examples": cmd_examples, "dashboard": cmd_dashboard, "run": cmd_run,
        "image-cmd": cmd_run_image_cmd}
cmds[sys.argv[1]](*sys.argv[2:])
