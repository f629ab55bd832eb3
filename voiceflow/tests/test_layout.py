import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(package):
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield path, [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                yield path, [node.module]


def test_presence_never_imports_chat():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, names in imported_modules("presence")
        for name in names
        if name == "chat" or name.startswith("chat.")
    ]
    assert offenders == []


def test_only_broadcast_modules_touch_the_channel_layer():
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("chat", "presence")
        for path, names in imported_modules(package)
        if "channels.layers" in names
        and path.name != "broadcast.py"
        and "tests" not in path.parts
    ]
    assert offenders == []


def test_the_runtime_never_imports_the_apps_but_for_the_drain():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, names in imported_modules("voiceflow/runtime")
        for name in names
        if name.split(".")[0] in ("chat", "presence")
        and (path.name, name) != ("server.py", "chat.sockets")
    ]
    assert offenders == []


def test_only_the_runtime_builds_websocket_frames():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in ("chat", "presence")
        for path, names in imported_modules(package)
        for name in names
        if name.startswith("voiceflow.runtime.websocket") and "tests" not in path.parts
    ]
    assert offenders == []
