"""Compiling the page's TypeScript for the Node tests (tests/test_protocol_js.py, tests/test_mimifile_golden.py):
the tsc of `tests/js_protocol/` with the strict flags a Vite app uses."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "js_protocol"
TSC = HARNESS / "node_modules" / "typescript" / "bin" / "tsc"
TSC_FLAGS = [
    "--target",
    "ES2022",
    "--module",
    "ES2022",
    "--moduleResolution",
    "bundler",
    "--lib",
    "ES2022,DOM",
    "--strict",
    "--noUnusedLocals",
    "--noUnusedParameters",
    "--noImplicitReturns",
    "--noFallthroughCasesInSwitch",
    "--exactOptionalPropertyTypes",
    "--erasableSyntaxOnly",
    "--verbatimModuleSyntax",
    "--isolatedModules",
    "--noImplicitOverride",
    "--skipLibCheck",
]
"""web/tsconfig.json's strictness; the protocol mirror also takes `--noUncheckedIndexedAccess` (grid.ts, which
mimi-format.ts imports, is not written for it)."""
