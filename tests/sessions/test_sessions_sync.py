"""The mirror session sync function of cloudformation/mirror-receiver.yaml, run against a local
fake of the EC2 and ELB APIs on loopback.

The code under test is the template's own `SessionSyncFunction` ZipFile, extracted at start
and imported as a module (no copy to drift). AWS is played by moto's server (PyPI
`moto[server]`) behind a small proxy of our own on 127.0.0.1:

- moto serves everything it implements: VPC, subnets, instances, network interfaces, Elastic
  Load Balancing v2 (load balancers, target groups, targets, DescribeTargetHealth), traffic
  mirror targets and filters, CloudFormation stacks.
- moto implements the four traffic mirror session calls too, but without AWS's rules, so the
  proxy answers those itself (EC2 Query API, XML as the EC2 API reference documents it):
  sessions per interface limited to 3, unique session numbers per interface, interface,
  target and filter must exist, unsupported source instance types refused, PacketLength 8500
  stored for a Network Load Balancer target when none is given, RemoveField.N, pagination
  (2 sessions a page, so a caller that does not paginate misses sessions). It also plays the
  stack's IAM policy for the function's credentials: create only with the owner tag,
  modify/delete only sessions carrying it. Every other request is forwarded to moto.

Scenarios: an instance appears, an instance leaves, foreign sessions are left alone, an
interface with 3 sessions is skipped, an unsupported instance type is skipped, IP targets,
drift is corrected, a second run changes nothing, a source that cannot be read keeps its
sessions, dry run, the custom resource's Create and Delete, a stack being deleted.

Run: /opt/mirror-receiver-ci-venv/bin/python tests/sessions/test_sessions_sync.py
(needs boto3 and moto[server]; tests/sessions.rs runs it under `cargo test`).
"""

import contextlib
import hashlib
import http.server
import importlib.util
import io
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import unittest.mock
import urllib.error
import urllib.parse
import urllib.request
import uuid
from xml.sax.saxutils import escape

import boto3
import yaml
from botocore.exceptions import ClientError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(ROOT, "cloudformation", "mirror-receiver.yaml")
REGION = "us-east-1"
OWNER = "mirror-test"
OWNER_TAG = "mirror-receiver:owner"
SOURCE_TAG = "mirror-receiver:source"
SETUP_KEY = "setup"  # the test's own credentials: not subject to the stack's IAM policy
FUNCTION_KEY = "function"  # the function's credentials: the fake applies the stack's policy
# Traffic Mirroring is not available on T2 (AWS: "Traffic Mirroring limitations").
UNSUPPORTED_TYPES = ("t2.",)


# ---- the code under test --------------------------------------------------------------------
class _CfnLoader(yaml.SafeLoader):
    pass


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def load_template():
    with open(TEMPLATE) as f:
        return yaml.load(f, Loader=_CfnLoader)


def load_function():
    props = load_template()["Resources"]["SessionSyncFunction"]["Properties"]
    assert props["Handler"] == "index.handler", props["Handler"]
    code = props["Code"]["ZipFile"]
    directory = tempfile.mkdtemp(prefix="session-sync-")
    path = os.path.join(directory, "index.py")  # the name Lambda gives ZipFile code
    with open(path, "w") as f:
        f.write(code)
    spec = importlib.util.spec_from_file_location("session_sync_index", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shutil.rmtree(directory, ignore_errors=True)
    return module


sync = load_function()


# ---- moto and the fake ----------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_moto_server():
    candidate = os.path.join(os.path.dirname(sys.executable), "moto_server")
    return candidate if os.access(candidate, os.X_OK) else shutil.which("moto_server")


class MotoServer:
    def __init__(self):
        binary = find_moto_server()
        if not binary:
            raise RuntimeError("moto_server not found (pip install 'moto[server]')")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.log.seek(0)
                    raise RuntimeError("moto_server did not start: " + self.log.read().decode(errors="replace"))
                time.sleep(0.1)

    def reset(self):
        urllib.request.urlopen(urllib.request.Request(self.url + "/moto-api/reset", method="POST"), timeout=10).read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ApiError(Exception):
    def __init__(self, code, message, status=400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


def parse_indexed(params, prefix):
    """EC2 Query lists: Prefix.1, Prefix.2, ... in index order."""
    out = []
    for i in itertools.count(1):
        key = f"{prefix}.{i}"
        if key in params:
            out.append(params[key])
        elif not any(k.startswith(key + ".") for k in params):
            return out
        else:
            out.append(key)  # a structure: the caller reads its members under this prefix


class FakeSessions:
    """Traffic mirror sessions with AWS's rules; see the module docstring."""

    PAGE = 2

    def __init__(self, moto_url):
        self.moto = boto3.client("ec2", region_name=REGION, endpoint_url=moto_url,
                                 aws_access_key_id=SETUP_KEY, aws_secret_access_key="x")
        self.sessions = {}  # id -> session dict in the API's shape (boto3 names)
        self.calls = []  # (action, principal, params)
        self.lock = threading.Lock()
        self.elb_errors = {}  # (action, TargetGroupArn) -> (code, message)

    # helpers
    def interface(self, eni):
        try:
            return self.moto.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]
        except ClientError:
            raise ApiError("InvalidNetworkInterfaceID.NotFound", f"The networkInterface ID '{eni}' does not exist")

    def target(self, tid):
        found = self.moto.describe_traffic_mirror_targets(TrafficMirrorTargetIds=[tid])["TrafficMirrorTargets"]
        if not found:
            raise ApiError("InvalidTrafficMirrorTargetId.NotFound", f"The traffic mirror target '{tid}' does not exist")
        return found[0]

    def check_filter(self, fid):
        if not self.moto.describe_traffic_mirror_filters(TrafficMirrorFilterIds=[fid])["TrafficMirrorFilters"]:
            raise ApiError("InvalidTrafficMirrorFilterId.NotFound", f"The traffic mirror filter '{fid}' does not exist")

    def session(self, sid):
        if sid not in self.sessions:
            raise ApiError("InvalidTrafficMirrorSessionId.NotFound", f"The traffic mirror session '{sid}' does not exist")
        return self.sessions[sid]

    @staticmethod
    def owned(session):
        return any(t["Key"] == OWNER_TAG and t["Value"] == OWNER for t in session["Tags"])

    @staticmethod
    def denied(action):
        return ApiError("UnauthorizedOperation", f"You are not authorized to perform this operation ({action}).", 403)

    # actions
    def create(self, p, principal):
        eni = p["NetworkInterfaceId"]
        tags = []
        for spec in parse_indexed(p, "TagSpecification"):
            if p.get(spec + ".ResourceType") == "traffic-mirror-session":
                tags += [{"Key": p[t + ".Key"], "Value": p.get(t + ".Value", "")}
                         for t in parse_indexed(p, spec + ".Tag")]
        if principal == FUNCTION_KEY and {"Key": OWNER_TAG, "Value": OWNER} not in tags:
            raise self.denied("CreateTrafficMirrorSession")
        interface = self.interface(eni)
        target = self.target(p["TrafficMirrorTargetId"])
        self.check_filter(p["TrafficMirrorFilterId"])
        number = int(p["SessionNumber"])
        if not 1 <= number <= 32766:
            raise ApiError("InvalidParameterValue", "SessionNumber must be between 1 and 32766")
        present = [s for s in self.sessions.values() if s["NetworkInterfaceId"] == eni]
        if len(present) >= 3:
            raise ApiError("TrafficMirrorSessionsPerInterfaceLimitExceeded",
                           f"The network interface {eni} already has 3 traffic mirror sessions")
        if any(s["SessionNumber"] == number for s in present):
            raise ApiError("InvalidParameterValue", f"Session number {number} is in use on {eni}")
        instance_id = interface.get("Attachment", {}).get("InstanceId")
        if instance_id:
            reservations = self.moto.describe_instances(InstanceIds=[instance_id])["Reservations"]
            itype = reservations[0]["Instances"][0]["InstanceType"]
            if itype.startswith(UNSUPPORTED_TYPES):
                raise ApiError("InvalidParameterValue",
                               f"The instance type {itype} of {instance_id} is not supported as a traffic mirror source")
        session = {
            "TrafficMirrorSessionId": "tms-" + uuid.uuid4().hex[:17],
            "TrafficMirrorTargetId": p["TrafficMirrorTargetId"],
            "TrafficMirrorFilterId": p["TrafficMirrorFilterId"],
            "NetworkInterfaceId": eni,
            "OwnerId": "123456789012",
            "SessionNumber": number,
            "Tags": tags,
        }
        nlb = target.get("Type") == "network-load-balancer" or target.get("NetworkLoadBalancerArn")
        if "PacketLength" in p:
            length = int(p["PacketLength"])
            if nlb and not 1 <= length <= 8500:
                raise ApiError("InvalidParameterValue", "PacketLength must be 1..8500 for a Network Load Balancer target")
            session["PacketLength"] = length
        elif nlb:
            session["PacketLength"] = 8500
        session["VirtualNetworkId"] = int(p["VirtualNetworkId"]) if "VirtualNetworkId" in p else \
            int.from_bytes(os.urandom(3), "big")
        if "Description" in p:
            session["Description"] = p["Description"]
        self.sessions[session["TrafficMirrorSessionId"]] = session
        return {"trafficMirrorSession": session, "clientToken": p.get("ClientToken", uuid.uuid4().hex)}

    def describe(self, p, principal):
        found = list(self.sessions.values())
        ids = parse_indexed(p, "TrafficMirrorSessionId")
        if ids:
            found = [s for s in found if s["TrafficMirrorSessionId"] in ids]
        fields = {"traffic-mirror-session-id": "TrafficMirrorSessionId", "traffic-mirror-target-id": "TrafficMirrorTargetId",
                  "traffic-mirror-filter-id": "TrafficMirrorFilterId", "network-interface-id": "NetworkInterfaceId",
                  "session-number": "SessionNumber", "virtual-network-id": "VirtualNetworkId"}
        for f in parse_indexed(p, "Filter"):
            name, values = p[f + ".Name"], parse_indexed(p, f + ".Value")
            if name.startswith("tag:"):
                key = name[4:]
                found = [s for s in found if any(t["Key"] == key and t["Value"] in values for t in s["Tags"])]
            elif name in fields:
                found = [s for s in found if str(s.get(fields[name])) in values]
            else:
                raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid")
        size = min(int(p.get("MaxResults", 1000)), self.PAGE)
        start = int(p.get("NextToken", "0"))
        page = found[start:start + size]
        result = {"trafficMirrorSessionSet": page}
        if start + size < len(found):
            result["nextToken"] = str(start + size)
        return result

    def delete(self, p, principal):
        session = self.session(p["TrafficMirrorSessionId"])
        if principal == FUNCTION_KEY and not self.owned(session):
            raise self.denied("DeleteTrafficMirrorSession")
        del self.sessions[session["TrafficMirrorSessionId"]]
        return {"trafficMirrorSessionId": session["TrafficMirrorSessionId"]}

    def modify(self, p, principal):
        session = self.session(p["TrafficMirrorSessionId"])
        if principal == FUNCTION_KEY and not self.owned(session):
            raise self.denied("ModifyTrafficMirrorSession")
        if "TrafficMirrorTargetId" in p:
            self.target(p["TrafficMirrorTargetId"])
            session["TrafficMirrorTargetId"] = p["TrafficMirrorTargetId"]
        if "TrafficMirrorFilterId" in p:
            self.check_filter(p["TrafficMirrorFilterId"])
            session["TrafficMirrorFilterId"] = p["TrafficMirrorFilterId"]
        for key in ("PacketLength", "SessionNumber", "VirtualNetworkId"):
            if key in p:
                session[key] = int(p[key])
        if "Description" in p:
            session["Description"] = p["Description"]
        for field in parse_indexed(p, "RemoveField"):
            if field == "packet-length":
                session["PacketLength"] = 8500  # the default for a Network Load Balancer target
            elif field == "description":
                session.pop("Description", None)
            elif field == "virtual-network-id":
                session["VirtualNetworkId"] = int.from_bytes(os.urandom(3), "big")
        return {"trafficMirrorSession": session}

    ACTIONS = {"CreateTrafficMirrorSession": create, "DescribeTrafficMirrorSessions": describe,
               "DeleteTrafficMirrorSession": delete, "ModifyTrafficMirrorSession": modify}

    def handle(self, action, params, principal):
        with self.lock:
            self.calls.append((action, principal, params))
            return self.ACTIONS[action](self, params, principal)


def to_xml(name, value):
    """EC2 response XML: lists as <item>, tags as tagSet, booleans lower case."""
    if isinstance(value, dict):
        inner = "".join(to_xml(k, v) for k, v in value.items())
    elif isinstance(value, list):
        inner = "".join(to_xml("item", v) for v in value)
    else:
        inner = escape(str(value).lower() if isinstance(value, bool) else str(value))
    return f"<{name}>{inner}</{name}>"


def session_xml(session):
    names = {"TrafficMirrorSessionId": "trafficMirrorSessionId", "TrafficMirrorTargetId": "trafficMirrorTargetId",
             "TrafficMirrorFilterId": "trafficMirrorFilterId", "NetworkInterfaceId": "networkInterfaceId",
             "OwnerId": "ownerId", "PacketLength": "packetLength", "SessionNumber": "sessionNumber",
             "VirtualNetworkId": "virtualNetworkId", "Description": "description"}
    out = {names[k]: v for k, v in session.items() if k in names}
    out["tagSet"] = [{"key": t["Key"], "value": t["Value"]} for t in session["Tags"]]
    return out


class Proxy:
    """One endpoint for boto3: session actions answered by FakeSessions, the rest by moto."""

    def __init__(self, moto_url, fake):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.forward(b"")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                auth = self.headers.get("Authorization", "")
                service = auth.split("Credential=")[1].split("/")[3] if "Credential=" in auth else ""
                principal = auth.split("Credential=")[1].split("/")[0] if "Credential=" in auth else ""
                params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
                action = params.get("Action", "")
                if service == "ec2" and action in FakeSessions.ACTIONS:
                    self.answer_ec2(action, params, principal)
                elif service == "elasticloadbalancing" and (action, params.get("TargetGroupArn")) in fake.elb_errors:
                    code, message = fake.elb_errors[(action, params.get("TargetGroupArn"))]
                    xml = (f'<ErrorResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/">'
                           f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
                           f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
                    self.send(400, xml.encode())
                else:
                    self.forward(body)

            def answer_ec2(self, action, params, principal):
                request_id = str(uuid.uuid4())
                try:
                    result = fake.handle(action, params, principal)
                except ApiError as err:
                    xml = (f"<Response><Errors><Error><Code>{err.code}</Code><Message>{escape(err.message)}</Message>"
                           f"</Error></Errors><RequestID>{request_id}</RequestID></Response>")
                    self.send(err.status, xml.encode())
                    return
                parts = [f"<requestId>{request_id}</requestId>"]
                for key, value in result.items():
                    if key == "trafficMirrorSession":
                        value = session_xml(value)
                    elif key == "trafficMirrorSessionSet":
                        value = [session_xml(s) for s in value]
                    parts.append(to_xml(key, value))
                xml = (f'<{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                       + "".join(parts) + f"</{action}Response>")
                self.send(200, xml.encode())

            def send(self, status, body, content_type="text/xml"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def forward(self, body):
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(moto_url + self.path, data=body or None, headers=headers,
                                                 method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, data, ctype = response.status, response.read(), response.headers.get("Content-Type")
                except urllib.error.HTTPError as err:
                    status, data, ctype = err.code, err.read(), err.headers.get("Content-Type")
                self.send(status, data, ctype or "text/xml")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        del proxy

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ---- the world --------------------------------------------------------------------------
class World:
    """A VPC with a web tier behind an NLB (instance targets), an API tier in an IP target
    group, and the receivers' NLB with its mirror target and filter."""

    def __init__(self, url):
        kw = dict(region_name=REGION, endpoint_url=url, aws_access_key_id=SETUP_KEY, aws_secret_access_key="x")
        self.ec2 = boto3.client("ec2", **kw)
        self.elbv2 = boto3.client("elbv2", **kw)
        self.cfn = boto3.client("cloudformation", **kw)
        self.vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.subnets = [
            self.ec2.create_subnet(VpcId=self.vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
            for i, az in ((1, "a"), (2, "b"))
        ]
        self.web_nlb = self.elbv2.create_load_balancer(Name="web-nlb", Type="network", Scheme="internal",
                                                       Subnets=self.subnets)["LoadBalancers"][0]["LoadBalancerArn"]
        self.web_tg = self.target_group("web-tg", "instance")
        self.elbv2.create_listener(LoadBalancerArn=self.web_nlb, Protocol="TCP", Port=80,
                                   DefaultActions=[{"Type": "forward", "TargetGroupArn": self.web_tg}])
        self.api_tg = self.target_group("api-tg", "ip")
        mirror_nlb = self.elbv2.create_load_balancer(Name="mirror-nlb", Type="network", Scheme="internal",
                                                     Subnets=self.subnets)["LoadBalancers"][0]["LoadBalancerArn"]
        self.target = self.ec2.create_traffic_mirror_target(
            NetworkLoadBalancerArn=mirror_nlb)["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
        self.filter = self.ec2.create_traffic_mirror_filter()["TrafficMirrorFilter"]["TrafficMirrorFilterId"]
        other_nlb = self.elbv2.create_load_balancer(Name="other-tool", Type="network", Scheme="internal",
                                                    Subnets=self.subnets)["LoadBalancers"][0]["LoadBalancerArn"]
        self.other_target = self.ec2.create_traffic_mirror_target(
            NetworkLoadBalancerArn=other_nlb)["TrafficMirrorTarget"]["TrafficMirrorTargetId"]
        self.other_filter = self.ec2.create_traffic_mirror_filter()["TrafficMirrorFilter"]["TrafficMirrorFilterId"]

    def target_group(self, name, kind):
        return self.elbv2.create_target_group(Name=name, Protocol="TCP", Port=80, VpcId=self.vpc,
                                              TargetType=kind)["TargetGroups"][0]["TargetGroupArn"]

    def instance(self, itype="m5.large"):
        """Returns (instance id, primary interface id)."""
        inst = self.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType=itype,
                                      SubnetId=self.subnets[0])["Instances"][0]
        enis = [e for e in inst["NetworkInterfaces"] if e["Attachment"]["DeviceIndex"] == 0]
        return inst["InstanceId"], enis[0]["NetworkInterfaceId"]

    def interface(self, ip):
        return self.ec2.create_network_interface(SubnetId=self.subnets[0],
                                                 PrivateIpAddress=ip)["NetworkInterface"]["NetworkInterfaceId"]

    def register(self, tg, *ids):
        self.elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": i} for i in ids])

    def deregister(self, tg, *ids):
        self.elbv2.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": i} for i in ids])

    def foreign_session(self, eni, number, target=None, tags=()):
        args = dict(NetworkInterfaceId=eni, TrafficMirrorTargetId=target or self.other_target,
                    TrafficMirrorFilterId=self.other_filter, SessionNumber=number)
        if tags:
            args["TagSpecifications"] = [{"ResourceType": "traffic-mirror-session",
                                          "Tags": [{"Key": k, "Value": v} for k, v in tags]}]
        return self.ec2.create_traffic_mirror_session(**args)["TrafficMirrorSession"]["TrafficMirrorSessionId"]

    def sessions(self):
        pages = self.ec2.get_paginator("describe_traffic_mirror_sessions").paginate()
        return {s["TrafficMirrorSessionId"]: s for page in pages for s in page["TrafficMirrorSessions"]}

    def sessions_on(self, eni):
        return [s for s in self.sessions().values() if s["NetworkInterfaceId"] == eni]


def tags(session):
    return {t["Key"]: t["Value"] for t in session.get("Tags", [])}


WRITES = {"CreateTrafficMirrorSession", "DeleteTrafficMirrorSession", "ModifyTrafficMirrorSession"}


class SessionSyncTest(unittest.TestCase):
    moto = None

    @classmethod
    def setUpClass(cls):
        cls.moto = MotoServer()

    @classmethod
    def tearDownClass(cls):
        cls.moto.stop()

    def setUp(self):
        self.moto.reset()
        self.fake = FakeSessions(self.moto.url)
        self.proxy = Proxy(self.moto.url, self.fake)
        self.addCleanup(self.proxy.stop)
        self.world = World(self.proxy.url)
        self.env = {
            "OWNER": OWNER,
            "TARGET_ID": self.world.target,
            "FILTER_ID": self.world.filter,
            "SOURCE_LOAD_BALANCER_ARNS": self.world.web_nlb,
            "SOURCE_TARGET_GROUP_ARNS": self.world.api_tg,
            "SOURCE_NETWORK_INTERFACE_IDS": "",
            "VNI_OVERRIDES": "api-tg=4242",
            "PACKET_LENGTH": "0",
            "STACK_ID": "",
        }
        self.web_vni = int.from_bytes(hashlib.sha256(b"web-nlb").digest()[:3], "big")

    def run_handler(self, event=None, env=None, expect_failure=False):
        """Runs the Lambda handler as Lambda would: environment variables, function credentials."""
        environment = {
            **self.env, **(env or {}),
            "AWS_ENDPOINT_URL": self.proxy.url, "AWS_ACCESS_KEY_ID": FUNCTION_KEY,
            "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        }
        start = len(self.fake.calls)
        out = io.StringIO()
        with unittest.mock.patch.dict(os.environ, environment), contextlib.redirect_stdout(out):
            if expect_failure:
                with self.assertRaises(sync.SyncFailed):
                    sync.handler(event if event is not None else {}, None)
                result = None
            else:
                result = sync.handler(event if event is not None else {}, None)
        self.last_calls = self.fake.calls[start:]
        self.last_log = out.getvalue()
        summaries = [json.loads(line) for line in self.last_log.splitlines()
                     if line.startswith("{") and '"mirror session sync"' in line]
        self.last_summary = summaries[-1] if summaries else None
        return result

    def writes(self):
        return [(a, p) for a, _, p in self.last_calls if a in WRITES]

    # ---- scenarios ---------------------------------------------------------------------------
    def test_targets_get_sessions_with_vni_tags_and_number(self):
        i1, eni1 = self.world.instance()
        i2, eni2 = self.world.instance()
        api_eni = self.world.interface("10.0.1.50")
        self.world.register(self.world.web_tg, i1, i2)
        self.world.register(self.world.api_tg, "10.0.1.50")

        summary = self.run_handler()
        self.assertEqual(len(summary["created"]), 3, summary)
        self.assertEqual(summary["skipped"], [])
        self.assertEqual(summary["failed"], [])
        by_eni = {s["NetworkInterfaceId"]: s for s in self.world.sessions().values()}
        self.assertEqual(set(by_eni), {eni1, eni2, api_eni})
        for eni, source, vni in ((eni1, self.world.web_nlb, self.web_vni), (eni2, self.world.web_nlb, self.web_vni),
                                 (api_eni, self.world.api_tg, 4242)):
            s = by_eni[eni]
            self.assertEqual(tags(s), {OWNER_TAG: OWNER, SOURCE_TAG: source})
            self.assertEqual(s["VirtualNetworkId"], vni)
            self.assertEqual(s["SessionNumber"], 1)
            self.assertEqual(s["TrafficMirrorTargetId"], self.world.target)
            self.assertEqual(s["TrafficMirrorFilterId"], self.world.filter)
            self.assertEqual(s["PacketLength"], 8500)  # AWS's default for an NLB target
        # The summary line is CloudWatch embedded metric format.
        self.assertEqual(self.last_summary["SessionsCreated"], 3)
        self.assertEqual(self.last_summary["_aws"]["CloudWatchMetrics"][0]["Namespace"], "mirror-receiver")
        self.assertEqual(self.last_summary["Stack"], OWNER)

    def test_default_vni_is_the_documented_hash(self):
        self.assertEqual(sync.default_vni("web-nlb"), self.web_vni)
        self.assertTrue(1 <= sync.default_vni("") <= 0xFFFFFF)
        for name in ("a", "web-nlb", "api-tg", "eni-0123456789abcdef0"):
            self.assertEqual(sync.default_vni(name),
                             int.from_bytes(hashlib.sha256(name.encode()).digest()[:3], "big") or 1)

    def test_second_run_changes_nothing(self):
        i1, _ = self.world.instance()
        self.world.interface("10.0.1.50")
        self.world.register(self.world.web_tg, i1)
        self.world.register(self.world.api_tg, "10.0.1.50")
        self.run_handler()
        before = self.world.sessions()
        summary = self.run_handler()
        self.assertEqual((summary["created"], summary["modified"], summary["deleted"]), ([], [], []))
        self.assertEqual(summary["unchanged"], 2)
        self.assertEqual(self.writes(), [])
        self.assertEqual(self.world.sessions(), before)

    def test_instance_appears_then_leaves(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        self.run_handler()
        self.assertEqual(len(self.world.sessions_on(eni1)), 1)

        i2, eni2 = self.world.instance()  # a new instance joins the target group
        self.world.register(self.world.web_tg, i2)
        summary = self.run_handler()
        self.assertEqual([c["eni"] for c in summary["created"]], [eni2])
        self.assertEqual(summary["unchanged"], 1)
        new = self.world.sessions_on(eni2)
        self.assertEqual(len(new), 1)
        self.assertEqual(new[0]["VirtualNetworkId"], self.web_vni)

        self.world.deregister(self.world.web_tg, i1)  # the first one leaves
        summary = self.run_handler()
        self.assertEqual([d["eni"] for d in summary["deleted"]], [eni1])
        self.assertEqual(self.world.sessions_on(eni1), [])
        self.assertEqual(len(self.world.sessions_on(eni2)), 1)

        self.world.ec2.terminate_instances(InstanceIds=[i2])  # still registered, but gone
        summary = self.run_handler()
        self.assertEqual([d["eni"] for d in summary["deleted"]], [eni2])
        self.assertEqual(summary["skipped"], [])

    def test_foreign_sessions_are_left_alone_and_counted(self):
        i1, eni1 = self.world.instance()
        i2, eni2 = self.world.instance()
        _, eni3 = self.world.instance()  # not behind any source
        self.world.register(self.world.web_tg, i1, i2)
        untagged = self.world.foreign_session(eni1, 1)
        other_stack = self.world.foreign_session(eni2, 1, tags=[(OWNER_TAG, "another-stack"), (SOURCE_TAG, self.world.web_nlb)])
        elsewhere = self.world.foreign_session(eni3, 7, target=self.world.target, tags=[("team", "x")])
        foreign = {sid: s for sid, s in self.world.sessions().items()}

        summary = self.run_handler()
        self.assertEqual(summary["foreign"], 2)
        self.assertEqual(summary["failed"], [])
        after = self.world.sessions()
        for sid in (untagged, other_stack, elsewhere):
            self.assertEqual(after[sid], foreign[sid], "a foreign session changed")
        # Ours come next to theirs, with the lowest free session number.
        for eni in (eni1, eni2):
            ours = [s for s in self.world.sessions_on(eni) if tags(s).get(OWNER_TAG) == OWNER]
            self.assertEqual([s["SessionNumber"] for s in ours], [2])
        for action, params in self.writes():
            self.assertNotIn(params.get("TrafficMirrorSessionId"), (untagged, other_stack, elsewhere), action)

        # Drop all sources: only our sessions go.
        summary = self.run_handler(env={"SOURCE_LOAD_BALANCER_ARNS": "", "SOURCE_TARGET_GROUP_ARNS": "",
                                        "VNI_OVERRIDES": ""})
        self.assertEqual(len(summary["deleted"]), 2)
        self.assertEqual(set(self.world.sessions()), {untagged, other_stack, elsewhere})

    def test_interface_already_mirrored_to_this_target_by_someone_else(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        theirs = self.world.foreign_session(eni1, 1, target=self.world.target)
        summary = self.run_handler()
        self.assertEqual(summary["created"], [])
        self.assertEqual(len(summary["skipped"]), 1)
        self.assertIn(theirs, summary["skipped"][0]["reason"])
        self.assertEqual(list(self.world.sessions()), [theirs])

    def test_interface_with_three_sessions_is_skipped_not_fatal(self):
        i1, eni1 = self.world.instance()
        i2, eni2 = self.world.instance()
        self.world.interface("10.0.1.50")
        self.world.register(self.world.web_tg, i1, i2)
        self.world.register(self.world.api_tg, "10.0.1.50")
        full = [self.world.foreign_session(eni1, n) for n in (1, 2, 3)]

        summary = self.run_handler()  # does not raise
        self.assertEqual(summary["failed"], [])
        self.assertEqual(len(summary["skipped"]), 1, summary["skipped"])
        skipped = summary["skipped"][0]
        self.assertEqual(skipped["eni"], eni1)
        self.assertEqual(skipped["target"], i1)
        self.assertIn("3 mirror sessions", skipped["reason"])
        self.assertEqual(len(summary["created"]), 2)  # the others are still mirrored
        self.assertEqual(sorted(s["TrafficMirrorSessionId"] for s in self.world.sessions_on(eni1)), sorted(full))
        self.assertEqual(len(self.world.sessions_on(eni2)), 1)
        self.assertFalse(any(p.get("NetworkInterfaceId") == eni1 for _, p in self.writes()),
                         "the function tried to create a 4th session")
        self.assertEqual(self.last_summary["SkippedInterfaces"], 1)

        # A slot frees up: the next run mirrors it.
        self.world.ec2.delete_traffic_mirror_session(TrafficMirrorSessionId=full[1])
        summary = self.run_handler()
        self.assertEqual([c["eni"] for c in summary["created"]], [eni1])
        self.assertEqual(summary["created"][0]["session_number"], 2)

    def test_unsupported_instance_type_is_skipped_not_fatal(self):
        i1, eni1 = self.world.instance("t2.micro")
        i2, eni2 = self.world.instance()
        self.world.register(self.world.web_tg, i1, i2)
        summary = self.run_handler()  # does not raise
        self.assertEqual(summary["failed"], [])
        self.assertEqual([s["eni"] for s in summary["skipped"]], [eni1])
        self.assertIn("not supported", summary["skipped"][0]["reason"])
        self.assertEqual([c["eni"] for c in summary["created"]], [eni2])
        self.assertEqual(self.world.sessions_on(eni1), [])

    def test_ip_targets(self):
        api_eni = self.world.interface("10.0.1.50")
        self.world.register(self.world.api_tg, "10.0.1.50", "10.0.1.99")  # .99: no interface has it
        summary = self.run_handler()
        self.assertEqual([c["eni"] for c in summary["created"]], [api_eni])
        self.assertEqual(summary["created"][0]["vni"], 4242)
        self.assertEqual([(s["target"], s["eni"]) for s in summary["skipped"]], [("10.0.1.99", None)])
        self.assertEqual(self.world.sessions_on(api_eni)[0]["VirtualNetworkId"], 4242)

    def test_interface_behind_two_sources_gets_one_session(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        summary = self.run_handler(env={"SOURCE_TARGET_GROUP_ARNS": f"{self.world.api_tg},{self.world.web_tg}",
                                        "SOURCE_NETWORK_INTERFACE_IDS": eni1})
        self.assertEqual(len(summary["created"]), 1)
        self.assertEqual(summary["created"][0]["source"], self.world.web_nlb)  # the first source wins
        self.assertEqual(len(self.world.sessions_on(eni1)), 1)

    def test_drift_is_corrected(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        self.run_handler()
        sid = self.world.sessions_on(eni1)[0]["TrafficMirrorSessionId"]
        self.world.ec2.modify_traffic_mirror_session(TrafficMirrorSessionId=sid, VirtualNetworkId=7,
                                                     TrafficMirrorFilterId=self.world.other_filter, PacketLength=100)
        summary = self.run_handler()
        self.assertEqual(len(summary["modified"]), 1)
        self.assertEqual(summary["modified"][0]["changes"], {"TrafficMirrorFilterId": self.world.filter,
                                                            "VirtualNetworkId": self.web_vni,
                                                            "RemoveFields": ["packet-length"]})
        s = self.world.sessions()[sid]
        self.assertEqual((s["VirtualNetworkId"], s["TrafficMirrorFilterId"], s["PacketLength"]),
                         (self.web_vni, self.world.filter, 8500))

        # A configured packet length and VNI are applied to the existing session.
        summary = self.run_handler(env={"PACKET_LENGTH": "1500", "VNI_OVERRIDES": "web-nlb=99"})
        self.assertEqual(summary["modified"][0]["changes"], {"VirtualNetworkId": 99, "PacketLength": 1500})
        s = self.world.sessions()[sid]
        self.assertEqual((s["VirtualNetworkId"], s["PacketLength"]), (99, 1500))
        self.run_handler(env={"PACKET_LENGTH": "1500", "VNI_OVERRIDES": "web-nlb=99"})
        self.assertEqual(self.writes(), [])

    def test_source_that_cannot_be_read_keeps_its_sessions_and_fails_the_run(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        self.run_handler()
        self.fake.elb_errors[("DescribeTargetHealth", self.world.web_tg)] = ("AccessDenied", "not authorized")
        self.run_handler(expect_failure=True)
        self.assertEqual(len(self.last_summary["failed"]), 1)
        self.assertEqual(self.last_summary["failed"][0]["source"], self.world.web_nlb)
        self.assertEqual(self.writes(), [])
        self.assertEqual(len(self.world.sessions_on(eni1)), 1)

    def test_source_that_no_longer_exists_loses_its_sessions(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        self.run_handler()
        self.world.elbv2.delete_load_balancer(LoadBalancerArn=self.world.web_nlb)
        summary = self.run_handler()
        self.assertIn("LoadBalancerNotFound", summary["skipped"][0]["reason"])
        self.assertEqual([d["eni"] for d in summary["deleted"]], [eni1])

    def test_dry_run_changes_nothing(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        summary = self.run_handler({"dry_run": True})
        self.assertTrue(summary["dry_run"])
        self.assertEqual([c["eni"] for c in summary["created"]], [eni1])
        self.assertEqual(self.writes(), [])
        self.assertEqual(self.world.sessions(), {})

    def test_bad_settings_are_refused_before_any_change(self):
        for env, needle in (({"VNI_OVERRIDES": "web-nlb=0"}, "1..16777215"),
                            ({"VNI_OVERRIDES": "nosuch=5"}, "nosuch"),
                            ({"SOURCE_LOAD_BALANCER_ARNS": "web-nlb"}, "load balancer ARN"),
                            ({"PACKET_LENGTH": "9000"}, "PACKET_LENGTH"),
                            ({"TARGET_ID": ""}, "TARGET_ID")):
            with self.subTest(env=env):
                with unittest.mock.patch.dict(os.environ, {**self.env, **env}):
                    with self.assertRaisesRegex(sync.ConfigError, needle):
                        sync.Config.from_env()

    def test_custom_resource_create_then_delete(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        foreign = self.world.foreign_session(eni1, 1)
        responses = []

        class Receiver(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_PUT(self):
                responses.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        event = {
            "RequestType": "Create",
            "ResponseURL": f"http://127.0.0.1:{server.server_address[1]}/response",
            "StackId": f"arn:aws:cloudformation:{REGION}:123456789012:stack/{OWNER}/guid",
            "RequestId": "req-1",
            "LogicalResourceId": "SessionSync",
            "ResourceType": "Custom::MirrorSessionSync",
            "ResourceProperties": {},
        }
        self.run_handler(event)
        self.assertEqual(responses[-1]["Status"], "SUCCESS", responses[-1])
        self.assertEqual(responses[-1]["PhysicalResourceId"], f"{OWNER}-session-sync")
        self.assertEqual(responses[-1]["Data"]["created"], 1)
        self.assertEqual(len(self.world.sessions_on(eni1)), 2)

        # Delete works even if the settings broke since (only the owner is needed).
        self.run_handler({**event, "RequestType": "Delete", "PhysicalResourceId": f"{OWNER}-session-sync"},
                         env={"VNI_OVERRIDES": "x=y", "SOURCE_LOAD_BALANCER_ARNS": "bad"})
        self.assertEqual(responses[-1]["Status"], "SUCCESS", responses[-1])
        self.assertEqual(responses[-1]["PhysicalResourceId"], f"{OWNER}-session-sync")
        self.assertEqual(list(self.world.sessions()), [foreign])

        # Bad settings fail the deployment, with the reason.
        with self.assertLogs("session-sync", "ERROR"):
            self.run_handler(event, env={"VNI_OVERRIDES": "x=y"})
        self.assertEqual(responses[-1]["Status"], "FAILED")
        self.assertIn("VNI_OVERRIDES", responses[-1]["Reason"])

    def test_no_scheduled_run_while_the_stack_is_being_deleted(self):
        i1, eni1 = self.world.instance()
        self.world.register(self.world.web_tg, i1)
        template = json.dumps({"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}})
        live = self.world.cfn.create_stack(StackName="live", TemplateBody=template)["StackId"]
        gone = self.world.cfn.create_stack(StackName="gone", TemplateBody=template)["StackId"]
        self.world.cfn.delete_stack(StackName=gone)

        result = self.run_handler(env={"STACK_ID": gone})
        self.assertEqual(result, {"skipped_run": "DELETE_COMPLETE"})
        self.assertEqual(self.world.sessions(), {})
        summary = self.run_handler(env={"STACK_ID": live})
        self.assertEqual([c["eni"] for c in summary["created"]], [eni1])

    def test_template_passes_the_settings_the_code_reads(self):
        props = load_template()["Resources"]["SessionSyncFunction"]["Properties"]
        self.assertEqual(set(props["Environment"]["Variables"]), set(sync.ENV_VARS))
        self.assertEqual(props["Runtime"], "python3.12")


if __name__ == "__main__":
    unittest.main(verbosity=2)
