{
  "targets": [
    {
      "target_name": "record_aead",
      "sources": ["crypto/native/record_aead.c", "crypto/native/record_pool.c", "crypto/native/handshake_keys.c", "crypto/native/handshake_hash.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
