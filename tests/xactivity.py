"""Real X input on a test desktop through the XTEST extension (libXtst, by ctypes).

The agent reads the X server's idle time (MIT-SCREEN-SAVER); an Xvnc started minutes
before a test is already idle, so without input the first poll after a viewer connects
reports ``login`` and ``idle`` together. ``KeepActive`` moves the pointer on the X server
itself, as a user at the desktop would, so that "active" lasts exactly as long as the test
says and "idle" begins when it stops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from types import TracebackType


class XTest:
    """One connection to an X display that can fake pointer motion."""

    def __init__(self, display: str) -> None:
        x11, xtst = ctypes.util.find_library("X11"), ctypes.util.find_library("Xtst")
        assert x11 and xtst, "libX11 and libXtst are needed (Debian: libxtst6)"
        self._x, self._xtst = ctypes.CDLL(x11), ctypes.CDLL(xtst)
        self._x.XOpenDisplay.restype = ctypes.c_void_p
        self._x.XOpenDisplay.argtypes = [ctypes.c_char_p]
        self._x.XFlush.argtypes = [ctypes.c_void_p]
        self._x.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._x.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self._xtst.XTestQueryExtension.argtypes = [ctypes.c_void_p] + [
            ctypes.POINTER(ctypes.c_int)
        ] * 4
        self._xtst.XTestFakeRelativeMotionEvent.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_ulong,
        ]
        # A just-started Xvnc may not take X clients yet: give it a few seconds.
        deadline = time.monotonic() + 15
        while not (dpy := self._x.XOpenDisplay(display.encode())):
            assert time.monotonic() < deadline, f"cannot open X display {display}"
            time.sleep(0.1)
        self._dpy: int | None = dpy
        ints = [ctypes.c_int() for _ in range(4)]
        assert self._xtst.XTestQueryExtension(dpy, *[ctypes.byref(i) for i in ints]), (
            f"X display {display} has no XTEST extension"
        )
        self._step = 1

    def move(self) -> None:
        """Nudge the pointer one pixel (back and forth): input that resets idle time."""
        assert self._dpy is not None
        self._xtst.XTestFakeRelativeMotionEvent(self._dpy, self._step, 0, 0)
        self._step = -self._step
        self._x.XSync(self._dpy, 0)  # the server has it before we return

    def close(self) -> None:
        if self._dpy is not None:
            self._x.XCloseDisplay(self._dpy)
            self._dpy = None


class KeepActive:
    """While inside ``with``, real pointer input every ``every_s`` seconds on ``display``.

    On entry the input is already delivered (so the idle time is about zero from then on);
    on exit the input stops, and the X server's idle time starts counting.
    """

    def __init__(self, display: str, every_s: float = 0.25) -> None:
        self.display = display
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._x: XTest | None = None

    def __enter__(self) -> KeepActive:
        self._x = XTest(self.display)
        self._x.move()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="x-keep-active", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._x is not None
        while not self._stop.wait(self.every_s):
            self._x.move()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._x is not None:
            self._x.close()
            self._x = None
