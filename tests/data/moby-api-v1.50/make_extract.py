"""Make extract.json from moby's api/docs/v1.50.yaml: for a sample of definitions only the facts
(property names, types, formats, enums, references) and for shoal's paths the status codes; no prose.

    python make_extract.py path/to/v1.50.yaml > extract.json
"""

import json
import sys

import yaml

DEFINITIONS = [
    "Swarm", "ClusterInfo", "SwarmSpec", "JoinTokens", "TLSInfo", "ObjectVersion", "SwarmInfo", "PeerNode",
    "LocalNodeState", "Node", "NodeSpec", "NodeDescription", "NodeStatus", "ManagerStatus", "NodeState",
    "Reachability", "EngineDescription", "Platform", "ResourceObject", "Limit", "Service", "ServiceSpec",
    "TaskSpec", "EndpointSpec", "EndpointPortConfig", "NetworkAttachmentConfig", "Mount", "HealthConfig", "Task",
    "TaskState", "TaskStatus", "ContainerStatus", "PortStatus", "ServiceCreateResponse", "ServiceUpdateResponse",
    "ErrorResponse", "DistributionInspect", "OCIDescriptor", "OCIPlatform", "IPAM", "IPAMConfig",
    "NetworkCreateResponse",
]
PATHS = [
    "/_ping", "/version", "/info", "/swarm", "/swarm/init", "/swarm/join", "/swarm/leave", "/swarm/update",
    "/swarm/unlockkey", "/swarm/unlock", "/nodes", "/nodes/{id}", "/nodes/{id}/update", "/services",
    "/services/create", "/services/{id}", "/services/{id}/update", "/tasks", "/tasks/{id}", "/networks",
    "/networks/{id}", "/networks/create", "/distribution/{name}/json",
]


def facts(s: dict) -> dict:
    if "$ref" in s:
        return {"ref": s["$ref"].rsplit("/", 1)[1]}
    out: dict = {k: s[k] for k in ("type", "format", "enum") if k in s}
    if "x-nullable" in s:
        out["nullable"] = s["x-nullable"]
    if "allOf" in s:
        out["allOf"] = [facts(x) for x in s["allOf"]]
    if "properties" in s:
        out["properties"] = {k: facts(v) for k, v in s["properties"].items()}
    if "items" in s:
        out["items"] = facts(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        out["additionalProperties"] = facts(s["additionalProperties"])
    return out


def main() -> None:
    doc = yaml.safe_load(open(sys.argv[1]))
    paths = {}
    for p in PATHS:
        for method, op in doc["paths"][p].items():
            if method != "parameters":
                paths[f"{method.upper()} {p}"] = sorted(str(code) for code in op["responses"])
    out = {"definitions": {n: facts(doc["definitions"][n]) for n in DEFINITIONS}, "paths": paths}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
