"""The descriptor pool that every module of this package registers into.

Kept apart from protobuf's default pool so that these messages can live in one
process with tritonclient's copies, which use the same full names.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
