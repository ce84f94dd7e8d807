"""The test and measurement lab: brokers, scratch deployments, benchmarks, drills, demo.

What a deployment runs lives in `deploy` itself (settings, worker, app, topics,
logs, the operating CLI). This package is what tests, benchmarks, the crash drill,
online evaluation and the demo use to stand up and read back throw-away
deployments. A running deployment never imports it, except `deploy.cli`
registering the lab's commands (`deploy.lab.cli.register`).
"""
