"""`python -m pj_common.schemas DIR`: write the JSON Schema of every contract model to DIR.

The committed copies in docs/schemas are compared with the models by a test, so a change to the
contract between services always shows in review.
"""

import json
import sys
from pathlib import Path

from .messages import CONTRACT_MODELS


def schemas() -> dict[str, str]:
    """File name -> JSON Schema text (wire names), for each contract model."""
    return {f"{model.__name__}.json": json.dumps(model.model_json_schema(by_alias=True), indent=2, sort_keys=True)
            + "\n" for model in CONTRACT_MODELS}


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in schemas().items():
        (target / name).write_text(text)
        print(target / name)


if __name__ == "__main__":
    main()
