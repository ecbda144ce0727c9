"""Typed records: one model per record drives decoding, table rows and the OpenAPI document."""
