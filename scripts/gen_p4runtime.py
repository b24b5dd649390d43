"""Install P4Runtime Python bindings generated for the protobuf runtime of this interpreter (upb).

The PyPI ``p4runtime`` wheels (1.4.1 up to 1.6.0) carry ``_pb2`` modules made by protoc 3.x: they build
their descriptors with ``FileDescriptor(serialized_pb=...)``, which modern protobuf's upb backend refuses
("Descriptors cannot be created directly"), so they only load with the pure-Python parser. Their
descriptors are still the authoritative schema, so this script:

1. downloads the ``p4runtime`` wheel with ``pip download --no-deps`` (it is never installed),
2. reads each ``serialized_pb`` literal out of its ``_pb2`` sources with ``ast`` (importing them is what
   fails), adds ``google/protobuf/any.proto`` and ``google/rpc/status.proto`` from the installed modern
   modules, and writes one FileDescriptorSet,
3. runs grpcio-tools' protoc on it (``--descriptor_set_in``) for ``_pb2`` and ``_pb2_grpc`` modules under
   the same import names (``p4.v1.p4runtime_pb2``, ``p4.config.v1.p4info_pb2``, ...),
4. installs them as the distribution ``offloadgen-p4runtime`` with pip, so pip knows who owns ``p4/``.

``google.rpc`` comes from ``googleapis-common-protos``, already generated for modern protobuf. The installed
version is ``<p4runtime>+protobuf<protobuf>.grpc<grpcio-tools>``: when it matches, nothing is done (no
network), so ``scripts/setup.sh`` can call this every time; upgrading either regenerates.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DIST = "offloadgen-p4runtime"
#: The P4Runtime spec release whose schema the bindings carry; the same one p4runtime-shell 0.0.6 pins, so
#: the controller and the outside shell speak exactly the same messages.
P4RUNTIME_VERSION = "1.4.1"
#: The wheel's modules, in dependency order (p4info imports p4types; p4runtime imports the rest).
MODULES = ("p4/config/v1/p4types", "p4/config/v1/p4info", "p4/v1/p4data", "p4/v1/p4runtime")


def wanted_version(p4runtime: str) -> str:
    """Names the schema and the generator: new protobuf or grpcio-tools (whose stubs demand grpcio at least
    as new as themselves) means regenerate."""
    v = importlib.metadata.version
    return f"{p4runtime}+protobuf{v('protobuf')}.grpc{v('grpcio-tools')}"


def installed_version() -> str | None:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None


def serialized_descriptor(source: str, name: str) -> bytes:
    """The FileDescriptorProto bytes a protoc-3.x ``_pb2`` module passes as ``serialized_pb``."""
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.keyword) and node.arg == "serialized_pb":
            value = ast.literal_eval(node.value)
            if isinstance(value, bytes):
                return value
    raise SystemExit(f"gen_p4runtime: no serialized_pb in {name}; the p4runtime wheel's layout changed, "
                     f"pick another P4RUNTIME_VERSION in {__file__}")


def descriptor_set(wheel: Path) -> bytes:
    from google.protobuf import any_pb2, descriptor_pb2
    from google.rpc import status_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    for module in (any_pb2, status_pb2):
        module.DESCRIPTOR.CopyToProto(fds.file.add())
    with zipfile.ZipFile(wheel) as zf:
        for mod in MODULES:
            raw = serialized_descriptor(zf.read(f"{mod}_pb2.py").decode(), f"{wheel.name}:{mod}_pb2.py")
            fds.file.add().ParseFromString(raw)
    return fds.SerializeToString()


def generate(p4runtime: str, work: Path) -> Path:
    """Write an installable source tree of the bindings under *work*; return it."""
    from grpc_tools import protoc

    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                    f"p4runtime=={p4runtime}", "-d", str(work / "wheel")], check=True)
    (wheel,) = (work / "wheel").glob("p4runtime-*.whl")
    (work / "set.pb").write_bytes(descriptor_set(wheel))
    src = work / "src"
    src.mkdir()
    protos = [f"{m}.proto" for m in MODULES]
    rc = protoc.main(["protoc", f"--descriptor_set_in={work / 'set.pb'}", f"--python_out={src}",
                      f"--grpc_python_out={src}", *protos])
    if rc != 0:
        raise SystemExit(f"gen_p4runtime: protoc failed ({rc}) on {protos}")
    for pkg in ("p4", "p4/config", "p4/config/v1", "p4/v1"):
        (src / pkg / "__init__.py").touch()
    (work / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{DIST}"\nversion = "{wanted_version(p4runtime)}"\n'
        f'description = "P4Runtime {p4runtime} bindings regenerated for protobuf '
        f'{importlib.metadata.version("protobuf")} (upb) by offloadgen scripts/gen_p4runtime.py"\n\n'
        '[tool.setuptools.packages.find]\nwhere = ["src"]\ninclude = ["p4*"]\n')
    return work


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--p4runtime", default=P4RUNTIME_VERSION, help="p4runtime release to take the schema from")
    ap.add_argument("--force", action="store_true", help="regenerate even when the installed bindings match")
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 when the installed bindings do not match (setup.sh would regenerate)")
    args = ap.parse_args()
    want = wanted_version(args.p4runtime)
    have = installed_version()
    if have == want and not args.force:
        print(f"gen_p4runtime: {DIST} {want} already installed")
        return 0
    if args.check:
        print(f"gen_p4runtime: {DIST} is {have or 'not installed'}, want {want}; run scripts/setup.sh")
        return 1
    with tempfile.TemporaryDirectory(prefix="gen-p4runtime-") as tmp:
        tree = generate(args.p4runtime, Path(tmp))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                        str(tree)], check=True)
    print(f"gen_p4runtime: installed {DIST} {want}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
