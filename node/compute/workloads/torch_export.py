"""torch-export/v1: run a requester's ``torch.export`` program on their input tensors.

Why not accept ``.pt2`` files: ``torch.export.save`` (torch 2.13, ``torch/export/pt2_archive``) writes
the example inputs with ``torch.save`` (pickle) and ``torch.export.load`` reads them through
``deserialize_torch_artifact``, which retries with ``torch.load(weights_only=False)`` when the safe
loader fails -- arbitrary code on a crafted file. Tensor-subclass weights and custom objects are
pickled too. So the job input is our own bundle, a single safetensors file:

* metadata ``format`` = ``gpunode.torch-export/v1`` and ``program`` = the JSON graph that
  ``torch._export.serde.serialize.serialize(ep, serialize_state_dict=False, serialize_constants=False,
  serialize_example_inputs=False).exported_program`` produces (pure JSON, no pickle);
* tensors ``state/<fqn>`` (the program's state_dict), ``const/<fqn>`` (its tensor constants) and the
  input tensors under plain names without ``/``, which the params select: ``{"inputs": ["x0", ...]}``.

Loading hands dicts of tensors to ``ExportedProgramDeserializer.deserialize`` and ``None`` as example
inputs, so its torch.load branches are never reached; safetensors itself is a JSON header plus raw
bytes. Zip/pickle files (``torch.save``, ``torch.export.save``) are refused by their magic bytes.

Pickle is not the only way a serialized program can run code, so the JSON is checked first: every
node must call a plain ``torch.ops.aten`` overload (the deserializer would otherwise resolve any
``torch.*`` callable, e.g. ``torch.os.system``), with file-touching ops refused; symbolic expressions
are refused (they go through ``sympy.sympify``, i.e. ``eval``), as are guard code (``exec``'d by
``ExportedProgram.module()``), subgraphs, custom objects and non-tensor inputs/outputs. Metadata and the
module call graph (whose treespecs may import modules) are dropped; the graph is run directly rather
than through ``ep.module()``. This narrows the attack surface; process isolation still has to contain
whatever is left (e.g. uninitialised memory from ``aten.empty``).

``torch._export.serde`` is private API; the bundle records the schema version and torch rejects
programs from an incompatible schema major version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.compute.workloads import (
    MAX_JSON_DEPTH,
    Estimate,
    ParamsError,
    Workload,
    WorkloadError,
    json_depth,
    require_keys,
    save_safetensors,
)

if TYPE_CHECKING:
    import torch

NAME = "torch-export/v1"
FORMAT = "gpunode.torch-export/v1"
STATE_PREFIX = "state/"
CONST_PREFIX = "const/"
MAX_INPUTS = 64
MAX_PROGRAM_CHARS = 64 << 20
_INPUT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQN = re.compile(r"[A-Za-z0-9_.]{1,512}")
_TOP_KEYS = {
    "graph_module",
    "opset_version",
    "range_constraints",
    "schema_version",
    "verifiers",
    "torch_version",
    "guards_code",
}
# argument/value kinds that lead to code execution, imports or opaque objects during deserialization
_DENIED_KEYS = {
    "as_expr",
    "as_graph",
    "as_custom_obj",
    "as_operator",
    "as_sym_int",
    "as_sym_ints",
    "as_sym_bool",
    "as_sym_bools",
    "as_sym_float",
    "as_sym_floats",
}
_DENIED_OPS = {"from_file", "save", "_print", "warn", "set_", "_nnpack_available"}
_INPUT_KINDS = {"parameter", "buffer", "tensor_constant", "user_input"}


class BundleError(WorkloadError):
    """The job's bundle is malformed or asks for something this node will not run."""


def _sniff(path: str) -> None:
    """Refuse pickle-bearing formats by their magic bytes before any parser looks at the file."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        raise BundleError("bundle is a zip archive (torch.save / torch.export.save output); pickle formats are refused")
    if head[:1] == b"\x80":
        raise BundleError("bundle is a pickle stream; pickle formats are refused")
    if len(head) < 9 or head[8:9] != b"{":
        raise BundleError("bundle is not a safetensors file")


def _check_target(target: Any) -> None:
    import torch

    parts = target.split(".") if isinstance(target, str) else []
    if len(parts) != 5 or parts[:3] != ["torch", "ops", "aten"]:
        raise BundleError(f"program calls {target!r}; only torch.ops.aten operators are allowed")
    op, overload = parts[3], parts[4]
    if not (_IDENT.fullmatch(op) and _IDENT.fullmatch(overload)) or op.startswith("__") or overload.startswith("__"):
        raise BundleError(f"program calls malformed operator {target!r}")
    if op in _DENIED_OPS:
        raise BundleError(f"operator aten.{op} is not allowed")
    try:
        fn = getattr(getattr(torch.ops.aten, op), overload)
    except (AttributeError, RuntimeError) as e:
        raise BundleError(f"unknown operator {target!r}") from e
    if not isinstance(fn, torch._ops.OpOverload):
        raise BundleError(f"{target!r} is not an operator overload")
    for arg in fn._schema.arguments:
        if "Storage" in str(arg.type) or arg.name == "filename":
            raise BundleError(f"operator aten.{op} takes a {arg.type} argument and is not allowed")


def _walk(value: Any, device: dict[str, Any]) -> None:
    """Recursively refuse dangerous kinds, check names, and pin every device to the job's device."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _DENIED_KEYS:
                raise BundleError(f"program uses {key!r} (dynamic shapes, subgraphs and custom objects are refused)")
            if key == "name" and isinstance(item, str) and not _IDENT.fullmatch(item):
                raise BundleError(f"invalid name {item!r} in program")
            if key in ("as_device", "device") and isinstance(item, dict):
                if item.get("type") not in ("cpu", "cuda"):
                    raise BundleError(f"program uses device {item.get('type')!r}")
                value[key] = dict(device)
            else:
                _walk(item, device)
    elif isinstance(value, list):
        for item in value:
            _walk(item, device)


def _spec_kind(spec: Any, allowed: set[str]) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in allowed:
        raise BundleError(f"unsupported signature entry {str(spec)[:200]}")
    kind, body = next(iter(spec.items()))
    if not isinstance(body, dict):
        raise BundleError("malformed signature entry")
    arg = body.get("arg")
    if kind in ("user_input", "user_output") and not (isinstance(arg, dict) and "as_tensor" in arg):
        raise BundleError(f"{kind} must be a tensor")
    return kind, body


def sanitize_program(program: Any, device: str = "cpu") -> dict[str, Any]:
    """Check a serialized program against the rules in the module docstring; return the cleaned copy."""
    import torch

    if not isinstance(program, dict) or not set(program) <= _TOP_KEYS or "graph_module" not in program:
        raise BundleError("program is not a serialized ExportedProgram")
    program = json.loads(json.dumps(program))  # private copy, we edit it
    if program.get("guards_code") or program.get("range_constraints"):
        raise BundleError("programs with guards or dynamic shape constraints are refused")
    gm = program["graph_module"]
    graph = gm.get("graph") if isinstance(gm, dict) else None
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise BundleError("program has no graph")
    for key in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"):
        if graph.get(key):
            raise BundleError(f"program has {key}; dynamic shapes and custom objects are refused")
    for key in graph.get("tensor_values") or {}:
        if not _IDENT.fullmatch(key):
            raise BundleError(f"invalid tensor name {key!r} in program")
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise BundleError("malformed node")
        _check_target(node.get("target"))
        node["metadata"] = {}
    gm["metadata"], gm["module_call_graph"], gm["treespec_namedtuple_fields"] = {}, [], {}
    signature = gm.get("signature")
    if not isinstance(signature, dict):
        raise BundleError("program has no signature")
    for spec in signature.get("input_specs", []):
        kind, body = _spec_kind(spec, _INPUT_KINDS)
        fqn = body.get(f"{kind}_name", "")
        if kind != "user_input" and not (isinstance(fqn, str) and _FQN.fullmatch(fqn)):
            raise BundleError(f"invalid {kind} name {fqn!r}")
    for spec in signature.get("output_specs", []):
        _spec_kind(spec, {"user_output"})
    dev = torch.device(device)
    _walk(program, {"type": dev.type, "index": dev.index})
    return program


@dataclass
class LoadedBundle:
    program: Any  # torch.export.ExportedProgram
    inputs: dict[str, torch.Tensor]


def load_bundle(path: str, device: str = "cpu") -> LoadedBundle:
    """Load and check a bundle onto ``device``; nothing in it is executed here."""
    import torch
    from safetensors import SafetensorError, safe_open
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    _sniff(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or "program" not in meta:
                raise BundleError(f"bundle metadata must name format {FORMAT!r} and hold a program")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as e:
        raise BundleError(f"bundle is not a valid safetensors file: {e}") from e
    text = meta["program"]
    if len(text) > MAX_PROGRAM_CHARS or json_depth(text) > MAX_JSON_DEPTH:
        raise BundleError(f"program larger than {MAX_PROGRAM_CHARS} characters or nested deeper than {MAX_JSON_DEPTH}")
    try:
        program = sanitize_program(json.loads(text), device)
    except json.JSONDecodeError as e:
        raise BundleError(f"program is not JSON: {e.msg}") from e
    except (TypeError, AttributeError, KeyError, ValueError, RecursionError) as e:
        raise BundleError(f"malformed program: {type(e).__name__}: {e}") from e
    specs = program["graph_module"]["signature"].get("input_specs", [])
    params = {spec["parameter"]["parameter_name"] for spec in specs if "parameter" in spec}
    state: dict[str, torch.Tensor] = {}
    consts: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.startswith(STATE_PREFIX):
            fqn = name[len(STATE_PREFIX) :]
            t = tensor.to(device)
            state[fqn] = torch.nn.Parameter(t, requires_grad=False) if fqn in params else t
        elif name.startswith(CONST_PREFIX):
            consts[name[len(CONST_PREFIX) :]] = tensor.to(device)
        elif "/" in name:
            raise BundleError(f"unexpected tensor {name!r} in bundle")
        else:
            inputs[name] = tensor
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program)
        ep = ExportedProgramDeserializer().deserialize(serialized, state, consts, None)
    except BundleError:
        raise
    except Exception as e:  # the deserializer raises many kinds; all mean "unusable program"
        raise BundleError(f"program does not deserialize: {type(e).__name__}: {e}") from e
    return LoadedBundle(ep, inputs)


def _flat_args(ep: Any, user_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Arguments of the lifted graph in placeholder order, with shapes/dtypes checked against it."""
    from torch.export.graph_signature import InputKind

    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    specs = ep.graph_signature.input_specs
    expected = sum(1 for s in specs if s.kind == InputKind.USER_INPUT)
    if len(user_inputs) != expected:
        raise BundleError(f"program takes {expected} inputs, params name {len(user_inputs)}")
    if len(placeholders) != len(specs):
        raise BundleError("program signature does not match its graph")
    supplied: Iterator[torch.Tensor] = iter(user_inputs)
    args = []
    for spec, node in zip(specs, placeholders, strict=True):
        if spec.kind == InputKind.USER_INPUT:
            t = next(supplied)
            val = node.meta.get("val")
            if val is not None and (tuple(val.shape) != tuple(t.shape) or val.dtype != t.dtype):
                got, want = f"{tuple(t.shape)} {t.dtype}", f"{tuple(val.shape)} {val.dtype}"
                raise BundleError(f"input {spec.arg.name} is {got}, program expects {want}")
            args.append(t)
        elif spec.kind == InputKind.PARAMETER or (spec.kind == InputKind.BUFFER and spec.persistent):
            args.append(ep.state_dict[spec.target])
        else:
            args.append(ep.constants[spec.target])
    return args


def make_bundle(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str,
    *,
    input_names: Sequence[str] | None = None,
) -> list[str]:
    """Export ``module`` (eval mode, core ATen IR) with its example inputs into a bundle at ``path``.

    Returns the input names to put in the job params (default ``x0``, ``x1``, ...).
    """
    import torch
    from torch._export.serde.serialize import serialize

    names = list(input_names) if input_names is not None else [f"x{i}" for i in range(len(example_inputs))]
    if len(names) != len(example_inputs) or not all(isinstance(n, str) and _INPUT_NAME.fullmatch(n) for n in names):
        raise ValueError("one valid name (letters, digits, _ . -) per example input is needed")
    module.eval()
    ep = torch.export.export(module, tuple(example_inputs)).run_decompositions()
    artifact = serialize(ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False)
    sanitize_program(json.loads(artifact.exported_program))  # refuse at build time what nodes would refuse

    def own(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", copy=True).contiguous()

    tensors = {STATE_PREFIX + fqn: own(t) for fqn, t in ep.state_dict.items()}
    for fqn, t in ep.constants.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"constant {fqn} is not a tensor; only tensor constants can be bundled")
        tensors[CONST_PREFIX + fqn] = own(t)
    tensors.update({name: own(t) for name, t in zip(names, example_inputs, strict=True)})
    save_safetensors(tensors, path, metadata={"format": FORMAT, "program": artifact.exported_program.decode("utf-8")})
    return names


class TorchExport(Workload):
    name = NAME

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        require_keys(params, {"inputs"})
        names = params["inputs"]
        if not isinstance(names, list) or not 1 <= len(names) <= MAX_INPUTS:
            raise ParamsError(f"inputs must be a list of 1 to {MAX_INPUTS} tensor names")
        for name in names:
            if not isinstance(name, str) or not _INPUT_NAME.fullmatch(name):
                raise ParamsError(f"invalid input name {name!r}")
        if len(set(names)) != len(names):
            raise ParamsError("duplicate input names")
        return {"inputs": list(names)}

    def estimate(self, params: dict[str, Any]) -> Estimate:
        return Estimate()  # depends entirely on the bundle

    def run(self, params: dict[str, Any], input_path: str | None, output_path: str, device: str) -> dict[str, Any]:
        import torch

        if input_path is None:
            raise BundleError("torch-export/v1 needs an input bundle")
        if torch.device(device).type == "cuda":
            # must be set before cuBLAS is first used in this process for deterministic GEMMs
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        try:
            bundle = load_bundle(input_path, device)
            missing = [n for n in params["inputs"] if n not in bundle.inputs]
            if missing:
                raise BundleError(f"bundle has no input tensor(s) {missing}")
            args = _flat_args(bundle.program, [bundle.inputs[n].to(device) for n in params["inputs"]])
            torch.manual_seed(0)
            with torch.inference_mode():
                result = bundle.program.graph_module(*args)
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
        outs = list(result) if isinstance(result, tuple | list) else [result]
        if not all(isinstance(o, torch.Tensor) for o in outs):
            raise BundleError("program returned a non-tensor output")
        tensors = {f"out{i}": o.detach().to("cpu", copy=True).contiguous() for i, o in enumerate(outs)}
        tmp = f"{output_path}.tmp-{os.getpid()}"
        try:
            save_safetensors(tensors, tmp)
            os.replace(tmp, output_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        with open(output_path, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        return {
            "workload": NAME,
            "outputs": [
                {"name": k, "dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                for k, v in tensors.items()
            ],
            "output_bytes": os.path.getsize(output_path),
            "output_sha256": sha,
        }
