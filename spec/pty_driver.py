#!/usr/bin/env python3
"""pty_driver.py SCENARIO -- argv...: runs argv on a fresh pseudo-terminal
and plays SCENARIO against it, one step a line (fields split by a tab):

  send <text>              type text; \\n, \\r, \\t, \\xHH, \\\\ are escapes
  expect <regex> [secs]    (a Python regex, on bytes) wait (10 s by default) until the output since the
                           last match matches; the match is consumed
  quiet <secs>             the output stays free of new text this long
  touch <path>             create the file at path (a program's task can wait
                           for it instead of sleeping a fixed time)
  exit [secs]              wait for the program to end; records its status

Prints the transcript (what the terminal showed, escapes visible), then
"status=N" (or "status=none"), then "OK" or "FAIL: <why>". Every wait is
bounded, so a hang fails instead of hanging; the program is killed at the
end if it is still running. Exit status: 0 when every step passed."""
import os, pty, re, select, signal, struct, sys, termios, fcntl, time


def unescape(s):
    return s.encode("latin-1").decode("unicode_escape").encode("latin-1")


def main():
    scenario, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    steps = [l.rstrip("\n").split("\t") for l in open(scenario) if l.strip()]
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    out, seen, status, why = b"", 0, None, None

    def pump(timeout):
        """Reads what arrives within timeout: bytes read, 0, or -1 at EOF."""
        nonlocal out
        r, _, _ = select.select([fd], [], [], max(timeout, 0))
        if not r:
            return 0
        try:
            data = os.read(fd, 65536)
        except OSError:
            return -1
        if not data:
            return -1
        out += data
        return len(data)

    def reap(block):
        nonlocal status
        if status is None:
            p, st = os.waitpid(pid, 0 if block else os.WNOHANG)
            if p:
                status = os.waitstatus_to_exitcode(st)

    for n, step in enumerate(steps, 1):
        op = step[0]
        if op == "send":
            # a long text is written as the program takes it, reading its
            # output meanwhile: a blocking write of all of it could wait
            # forever on a program that waits for its echo to be read
            data = unescape(step[1])
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            try:
                while data:
                    try:
                        data = data[os.write(fd, data):]
                    except BlockingIOError:
                        pass
                    if data and pump(0.05) < 0:
                        break
            finally:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        elif op == "expect":
            rx = re.compile(step[1].encode("latin-1"), re.S)
            limit = time.time() + float(step[2] if len(step) > 2 else 10)
            while True:
                m = rx.search(out, seen)
                if m:
                    seen = m.end()
                    break
                left = limit - time.time()
                if left <= 0 or pump(min(left, 0.1)) < 0 and \
                        not rx.search(out, seen):
                    why = "step %d: expected %r" % (n, step[1])
                    break
            if why:
                break
        elif op == "quiet":
            limit = time.time() + float(step[1])
            start = len(out)
            while time.time() < limit and pump(limit - time.time()) >= 0:
                pass
            if len(out) > start:
                why = "step %d: unexpected output %r" % (n, out[start:])
                break
        elif op == "touch":
            open(step[1], "w").close()
        elif op == "exit":
            limit = time.time() + float(step[1] if len(step) > 1 else 10)
            while status is None and time.time() < limit:
                if pump(0.1) < 0:
                    reap(True)
                    break
                reap(False)
            if status is None:
                why = "step %d: the program did not exit" % n
                break
        else:
            why = "step %d: unknown step %r" % (n, op)
            break
    if status is None:
        reap(False)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        reap(True)
        status = None
    while pump(0) > 0:
        pass
    sys.stdout.write(out.decode("utf-8", "replace").encode("unicode_escape")
                     .decode("ascii").replace("\\n", "\n") + "\n")
    sys.stdout.write("status=%s\n" % status)
    sys.stdout.write("OK\n" if why is None else "FAIL: %s\n" % why)
    return 0 if why is None else 1


if __name__ == "__main__":
    sys.exit(main())
