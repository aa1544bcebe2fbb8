"""Glue between twistd and a Node."""

from __future__ import annotations

from twisted.application.service import IService

from bitnode.node import build_node


def make_service(basedir: str | None) -> IService:
    """The Node for ``twistd bitnode``: it runs on the global reactor and stops it on process_stop."""
    return build_node(basedir)
