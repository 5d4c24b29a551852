"""The Tencent Cloud Omics API: TC3 signing, credentials, the async client and its models."""
