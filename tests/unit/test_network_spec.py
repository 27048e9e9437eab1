"""Network create requests with fields of the wrong JSON type get Go's decoding error, not a crash."""

from __future__ import annotations

import pytest

from shoal.api.decode import decode
from shoal.model.errors import BadRequest
from shoal.model.network import spec_from_request


@pytest.mark.parametrize(("req", "message"), [
    ({"Name": "n", "IPAM": -1}, "cannot unmarshal number into Go struct field CreateRequest.IPAM of type "
                                 "network.IPAM"),
    ({"Name": "n", "Scope": False}, "cannot unmarshal bool into Go struct field CreateRequest.Scope"),
    ({"Name": "n", "Attachable": "yes"}, "cannot unmarshal string into Go struct field CreateRequest.Attachable"),
    ({"Name": "n", "Labels": {"a": 1}}, "cannot unmarshal number into Go struct field CreateRequest.Labels"),
    ({"Name": "n", "IPAM": {"Config": {}}}, "cannot unmarshal object into Go struct field IPAM.IPAM.Config"),
    ({"Name": "n", "IPAM": {"Config": [{"Subnet": 10}]}}, "cannot unmarshal number into Go struct field "
                                                          "IPAMConfig.IPAM.Config.Subnet"),
])
def test_wrong_types_are_refused_like_dockerd(req: dict, message: str) -> None:
    """As Docker 28 decodes the body (network.CreateRequest): 400 "invalid JSON: json: cannot unmarshal ..."."""
    with pytest.raises(BadRequest) as e:
        decode({"Driver": "overlay", **req}, "NetworkCreateRequest")
    assert e.value.message.startswith("invalid JSON: json: ") and message in e.value.message


def test_a_good_request_passes() -> None:
    spec = spec_from_request({"Name": "n", "Driver": "overlay", "Attachable": True,
                              "IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}]}, "Labels": {"a": "b"}})
    assert spec["Name"] == "n"
