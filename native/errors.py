"""Errors of the offline flow engine, under the project's one hierarchy (base.errors)::

    MldError
    └── CaptureError           a capture file cannot be opened or fails mid-file
        └── UnsupportedLinkType    its link-layer type has no decoder: report and skip it

Messages name the file; a mid-file failure also names the byte offset and libpcap's reason.
"""

from __future__ import annotations

from base.errors import MldError

__all__ = ["CaptureError", "UnsupportedLinkType"]


class CaptureError(MldError):
    """A capture file could not be opened, or libpcap failed while reading it."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class UnsupportedLinkType(CaptureError):
    """The capture's link type has no decoder (see native.supported_linktypes())."""

    def __init__(self, path: str, linktype: str) -> None:
        super().__init__(
            path,
            f"unsupported link type {linktype}; supported: see native.supported_linktypes(). "
            "Skip this file or convert it (e.g. editcap -T ether)",
        )
        self.linktype = linktype
