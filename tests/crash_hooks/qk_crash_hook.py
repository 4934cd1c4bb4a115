"""A hook (`--hook qk_crash_hook:SegfaultWhileWriting`) that kills its own process with a real SIGSEGV while the
export stage writes the GGUF file whose name ends with $QK_CRASH_WHILE_WRITING: the native-crash report is tested
without depending on a CPU-specific llama.cpp bug. It watches the crash note (QLORA_KIT_CRASH_NOTE) that the GGUF
writer updates before each file."""

import ctypes
import json
import os
import threading
import time


class SegfaultWhileWriting:
    def __init__(self):
        self.started = False

    def on_event(self, event):
        if self.started or event.event != "stage" or event.name != "export" or event.status != "start":
            return
        self.started = True
        threading.Thread(target=self._wait_then_crash, daemon=True).start()

    def _wait_then_crash(self):
        note, suffix = os.environ["QLORA_KIT_CRASH_NOTE"], os.environ["QK_CRASH_WHILE_WRITING"]
        while True:
            try:
                noted = json.loads(open(note).read() or "{}")
            except (OSError, ValueError):
                noted = {}
            if noted.get("doing") == "ggml was writing" and noted.get("file", "").endswith(suffix):
                ctypes.string_at(0)  # a read at address 0: SIGSEGV, as native code would die
            time.sleep(0.005)
