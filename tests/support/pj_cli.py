"""Running the `pj` command line in tests: what one run gives back, and a run in this process."""

import asyncio
import json
import os
import traceback
from dataclasses import dataclass
from typing import Any

from typer.testing import CliRunner

from pj_client.cli import app


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def error(self) -> dict[str, Any]:
        """The error envelope `--json` prints on stderr."""
        return dict(json.loads(self.err.strip().splitlines()[-1])["error"])


async def pj_in_process(env: dict[str, str | None], *args: str, typed: str | None = None) -> Run:
    """`pj args...` in this process, with `env` as its whole PJ_ environment (typer's runner, in a thread of
    its own since a command may run an event loop): a subprocess costs a second or more of start-up on a
    busy machine, this none. A crash's traceback is added to `err`, shown by a failing assert's message."""
    # The runner sets these for the call only; every PJ_ variable of the test run is cleared first.
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PJ_")}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), input=typed, env={**cleared, **env},
                                     prog_name="pj")
    crash = ""
    if result.exc_info is not None and result.exception is not None and not isinstance(result.exception, SystemExit):
        crash = "".join(traceback.format_exception(*result.exc_info))
    return Run(result.exit_code, result.stdout, result.stderr + crash)
