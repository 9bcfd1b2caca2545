"""The ``wharf`` command: serve, hash-password, config check."""

from __future__ import annotations

import json
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click

from ..config import LOG_LEVELS, ConfigError, Settings, describe, load_settings
from ..security.cert_login import CERT_LOGIN_MODES
from ..security.passwords import hash_password, make_scram_credential
from ..security.tls import CLIENT_AUTH_MODES, TLS_VERSIONS
from .ctl import ctl  # `wharf ctl`: the management API client (ctl.py)


def _version() -> str:
    try:
        return version("wharf")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"wharf {_version()}")
        ctx.exit()


def _load(config_path: str | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
def main() -> None:
    """Wharf message broker."""


@main.command()
@click.option("--host", help="Address for the native protocol listener [0.0.0.0].")
@click.option("--port", type=click.IntRange(0, 65_535), help="Native protocol port [5680].")
@click.option("--http-port", type=click.IntRange(0, 65_535), help="HTTP port [8680].")
@click.option("--data-dir", help="Data directory [./data].")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="WHARF_CONFIG",
    help="TOML config file (also $WHARF_CONFIG).",
)
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), help="Log level [info]."
)
@click.option(
    "--plain-port",
    type=click.IntRange(0, 65_535),
    help="Plain native port (--port by another name); 0 turns the plain listener off.",
)
@click.option(
    "--amqp-port",
    type=click.IntRange(0, 65_535),
    help="AMQP 0-9-1 port for RabbitMQ clients [5672]; 0 turns the AMQP listener off.",
)
@click.option(
    "--amqps-port",
    type=click.IntRange(0, 65_535),
    help="AMQP 0-9-1 over TLS [5671], open when TLS is configured; 0 turns it off.",
)
@click.option("--tls-port", type=click.IntRange(0, 65_535), help="Native TLS port [5681].")
@click.option("--https-port", type=click.IntRange(0, 65_535), help="HTTPS port [8681].")
@click.option("--tls-cert-file", help="PEM certificate (chain); with --tls-key-file, TLS is on.")
@click.option("--tls-key-file", help="PEM private key of --tls-cert-file (unencrypted).")
@click.option("--tls-ca-file", help="PEM CA certificates that sign client certificates.")
@click.option(
    "--tls-client-auth",
    type=click.Choice(CLIENT_AUTH_MODES, case_sensitive=False),
    help="Client certificates: none, optional or required [none].",
)
@click.option(
    "--tls-min-version", type=click.Choice(tuple(TLS_VERSIONS)), help="Oldest TLS version [1.2]."
)
@click.option("--tls-ciphers", help="OpenSSL cipher list for TLS 1.2 [OpenSSL's default].")
@click.option(
    "--tls-cert-login",
    type=click.Choice(CERT_LOGIN_MODES, case_sensitive=False),
    help="EXTERNAL login: the user a client certificate names [none].",
)
@click.option(
    "--allow-plain-without-tls/--no-allow-plain-without-tls",
    default=None,
    help="Accept PLAIN and HTTP basic passwords from remote clients without TLS [no].",
)
@click.option(
    "--handshake-timeout-ms",
    type=click.IntRange(1, 3_600_000),
    help="TLS + Wharf handshake + login must finish within this [10000].",
)
@click.option(
    "--audit-log-file",
    help='Audit log, JSON lines [<data-dir>/audit.log]; "" turns it off.',
)
def serve(
    host: str | None,
    port: int | None,
    http_port: int | None,
    data_dir: str | None,
    config_path: str | None,
    log_level: str | None,
    audit_log_file: str | None,
    **tls_and_limits: Any,
) -> None:
    """Run the broker until SIGTERM/SIGINT; SIGHUP reloads the TLS certificate.

    Settings come from defaults < --config file < WHARF_* environment variables
    (WHARF_PORT, WHARF_DATA_DIR, ...) < these options.
    """
    overrides = {
        "host": host,
        "port": port,
        "http_port": http_port,
        "data_dir": data_dir,
        "log_level": log_level,
        "audit_log_file": audit_log_file,
        **tls_and_limits,  # plain_port, amqp(s)_port, tls_*, https_port, handshake_timeout_ms, ...
    }
    settings = _load(config_path, overrides)
    from ..server import run  # imported here so other commands do not load the broker

    sys.exit(run(settings))


@main.command("hash-password")
@click.argument("password", required=False)
@click.option(
    "--scram",
    is_flag=True,
    help="Print the SCRAM-SHA-256 credential for a [[users]] scram_sha_256 instead.",
)
def hash_password_command(password: str | None, scram: bool) -> None:
    """Print a scrypt hash of PASSWORD for a [[users]] password_hash (with --scram: its
    SCRAM-SHA-256 credential, for scram_sha_256).

    Without PASSWORD, prompts for it with hidden input (preferred: an argument is visible
    to other local users in the process list and shell history).
    """
    if password is None:
        password = str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    if not password:
        raise click.ClickException("the password must not be empty")
    if not scram:
        click.echo(hash_password(password))
        return
    try:
        click.echo(make_scram_credential(password))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def config() -> None:
    """Inspect configuration files."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print effective settings as JSON.")
def config_check(file: str, as_json: bool) -> None:
    """Validate FILE and print the effective settings (WHARF_* environment included)."""
    effective = describe(_load(file, {}))
    if as_json:
        click.echo(json.dumps(effective, indent=2))
        return
    click.echo(f"{file}: OK")
    for key, value in effective.items():
        if key == "users":
            shown = ", ".join(f"{u['name']} [{', '.join(u['tags'])}]" for u in value) or "-"
        else:
            shown = json.dumps(value)
        click.echo(f"  {key} = {shown}")


main.add_command(ctl)  # `wharf ctl ...` (ctl.py)
