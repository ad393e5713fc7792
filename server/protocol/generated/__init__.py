"""Protobuf and gRPC code generated from proto/ by scripts/gen_protos.py.

Do not edit; change the .proto files and regenerate. Descriptors live in the
private pool ``_pool.POOL``, not in protobuf's default pool.
"""
