"""Herald: a notification delivery pipeline on Apache Flink (PyFlink)."""
from pathlib import Path

from setuptools import find_packages, setup

requirements = [line.strip() for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

setup(
    name="herald",
    version="0.1.0",
    description="Notification delivery on Apache Flink: critical and promotional, exactly once per user",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["herald*", "jobs*", "operators*", "udfs*"]),
    py_modules=[],
    package_data={"herald_stack": ["pom.xml", "log4j2.yaml"]},
    install_requires=requirements,
)
