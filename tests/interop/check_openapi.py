"""Validates Vouch's OpenAPI document with openapi-spec-validator.

Usage: check_openapi.py FILE
"""

import json
import pathlib
import sys

from openapi_spec_validator import validate


def main() -> int:
    document = json.loads(pathlib.Path(sys.argv[1]).read_text())
    try:
        validate(document)
    except Exception as e:  # noqa: BLE001 - a refusal is a finding
        print(f"openapi-spec-validator refuses the document: {e}")
        return 1
    print(f"valid OpenAPI {document.get('openapi')}: {len(document.get('paths', {}))} paths")
    return 0


if __name__ == "__main__":
    sys.exit(main())
