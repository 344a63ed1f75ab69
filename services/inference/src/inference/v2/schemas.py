"""Bodies of the Open Inference Protocol v2 REST API (KServe V2, Triton, MLServer dialect).

Field names and layout follow the protocol so existing V2 clients work unchanged; see
https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The protocol's tensor datatypes. BF16 is left out: Triton only accepts it as binary data.
DATATYPES: tuple[str, ...] = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)


class RequestInput(BaseModel):
    # Clients add fields of their own (e.g. Triton's shared-memory parameters); ignoring them
    # keeps those clients working.
    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="A signature column, or any name for one [n, k] tensor")
    shape: list[int] = Field(description="[n] or [n, 1] per column; [n, k] for one tensor")
    # A plain string rather than an enum so that the error names inputs[i].datatype and lists
    # the valid types, instead of pydantic's enum message.
    datatype: str = Field(description=f"One of {', '.join(DATATYPES)}")
    parameters: dict[str, Any] | None = Field(
        default=None,
        description='`{"content_type": "base64"}` marks BYTES data as base64-encoded',
    )
    data: list[Any] = Field(description="Row-major values, flat or nested; null = missing")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="`predict` or `predict_proba`")
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "parameters": {"content_type": "pd"},
                    "inputs": [
                        {"name": "age", "shape": [2], "datatype": "FP64", "data": [42, None]},
                        {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["lyon", None]},
                    ],
                    "outputs": [{"name": "predict"}],
                }
            ]
        },
    )

    id: str | None = Field(
        default=None,
        description="Echoed in the response. The platform's request id (for POST /v1/feedback) "
        "is the X-Request-Id response header, and `id` when the request has none",
    )
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(
        min_length=1,
        description="One input per signature column, or one [n, k] tensor in signature order",
    )
    outputs: list[RequestOutput] | None = Field(
        default=None, description="Outputs to return; all of them when absent"
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = Field(
        default=None, description="The request's `id`, or the platform's request id without one"
    )
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class V2Error(BaseModel):
    """The protocol's error body: one string, which names the field first (``field: problem``)."""

    error: str
