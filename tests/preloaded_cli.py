"""The `urbanseg` command with PyTorch and the package imported once, for tests that run it many
times (tests/test_readme.py): importing them costs seconds per process, often more than the
command itself on tiny data.

    python tests/preloaded_cli.py serve SOCKET      # imports, then forks one child per command
    python tests/preloaded_cli.py run SOCKET ARGS   # what the `urbanseg` script on PATH runs

`run` imports nothing heavy: it sends its arguments, working folder, environment and standard
streams (the file descriptors themselves) to the server, waits for the exit code and exits with
it. The server's child takes them over, then calls `urbanseg.cli.main(ARGS)` as the installed
`urbanseg` command does. Only imports are shared: the server runs no computation before it forks
(so no thread pool is forked), and each command runs in a process of its own.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
import traceback

HEADER = struct.Struct("!I")


def serve(path: str) -> None:
    import urbanseg.cli  # noqa: F401  what every command needs, and what the heavy ones import
    import urbanseg.engine.train  # noqa: F401
    import urbanseg.evaluation  # noqa: F401
    import urbanseg.inference  # noqa: F401

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    print("ready", flush=True)
    while True:
        connection, _ = server.accept()
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            os._exit(run_child(connection))
        connection.close()
        while True:  # reap finished children
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    size = HEADER.unpack_from(data)[0]
    while len(data) < HEADER.size + size:
        chunk = connection.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return json.loads(data[HEADER.size:HEADER.size + size]), fds


def run_child(connection: socket.socket) -> int:
    request, fds = receive(connection)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["urbanseg", *request["args"]]
    from urbanseg.cli import main

    try:
        code = main(request["args"])
    except SystemExit as exit_:  # as the interpreter treats it: None is 0, a message is printed and is 1
        code = exit_.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught error: its traceback, as a fresh process would print it
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    code &= 0xFF
    connection.sendall(HEADER.pack(code))
    return code


def run(path: str, args: list[str]) -> int:
    payload = json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(path)
        socket.send_fds(connection, [HEADER.pack(len(payload)) + payload], [0, 1, 2])
        reply = b""
        while len(reply) < HEADER.size:
            chunk = connection.recv(HEADER.size - len(reply))
            if not chunk:
                print("urbanseg (preloaded): the command's process ended without an exit code", file=sys.stderr)
                return 1
            reply += chunk
    return HEADER.unpack(reply)[0]


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(run(sys.argv[2], sys.argv[3:]))
