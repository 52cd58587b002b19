"""sdbatch.cluster"""
