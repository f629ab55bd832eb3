"""The REST API's JSON parser: the socket's JSON rules for request bodies."""

import orjson
from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from .validators import json_too_deep


class JSONParser(parsers.JSONParser):
    """orjson instead of json: deep nesting is a 400, never a RecursionError (500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = orjson.loads(stream.read())
        except orjson.JSONDecodeError as error:
            raise ParseError(f"JSON parse error - {error}") from None
        if json_too_deep(data, settings.VOICEFLOW["MAX_JSON_DEPTH"]):
            raise ParseError("JSON is nested too deeply.")
        return data
