"""NVIDIA Xid error codes and what each one means.

Pure data. The texts are short summaries of NVIDIA's Xid catalog (the driver documentation's
"Xid Errors" table); unknown codes read "see NVIDIA's Xid catalog". Which Xids are ignored
for health is configuration (`--health-ignore-xids`, core/config.py).
"""

from __future__ import annotations

_TEXTS: dict[int, str] = {
    8: "GPU stopped processing (watchdog)",
    13: "graphics engine exception",
    31: "GPU memory page fault",
    32: "invalid or corrupted push buffer stream",
    38: "driver firmware error",
    43: "GPU stopped processing",
    45: "preemptive cleanup, due to previous errors",
    48: "double-bit ECC error",
    56: "display engine error",
    57: "error programming video memory interface",
    58: "unstable video memory interface detected",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    68: "video processor exception",
    69: "graphics engine class error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    109: "context switch timeout",
    110: "security fault error",
    119: "GSP RPC timeout",
    120: "GSP error",
    121: "C2C link corrected error",
    122: "SPI PMU RPC read failure",
    123: "SPI PMU RPC write failure",
    124: "SPI PMU RPC erase failure",
    140: "unrecovered ECC error",
    143: "GPU initialization failure",
    144: "NVLink SAW error",
    145: "NVLink RLW error",
    146: "NVLink TLW error",
    147: "NVLink TREX error",
    148: "NVLink NVLPW_CTRL error",
    149: "NVLink NETIR error",
    150: "NVLink MSE error",
    151: "key rotation error",
    154: "GPU recovery action changed",
    155: "NVLink SW defined error",
    156: "resource retirement event",
    157: "resource retirement failure",
    158: "GPU fatal timeout",
}


def xid_text(xid: int) -> str:
    return _TEXTS.get(xid, "see NVIDIA's Xid catalog")

