"""DNS-01's pure parts: the secrets' files (errors name the file and line, never a secret),
the propagation check (bounded, on a fake clock: a server that never shows the record is a
fault a test's own server would not show by itself), the settings that go together. The
protocol itself runs against a real BIND and a real PowerDNS (tests/integration/
test_acme_dns01.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.controller import settings as controller_settings
from agent.controller.dns01 import Dns01, Record
from agent.controller.dnsproviders import (
    DnsError,
    Lexicon,
    read_credentials,
    read_tsig_key,
    redact,
    zone_in,
)
from agent.controller.main import _dns01
from agent.core.settings import SettingsError

SECRET = "pYX+S8BDzDscWJxQH23mHIug9JmC2TyAVScPbQytSGU="
KEY = f'key "acme-controller" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'


def test_a_tsig_key_as_tsig_keygen_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "tsig.key"
    path.write_text(KEY)
    key = read_tsig_key(path)
    assert (key.name, key.algorithm, key.secret) == ("acme-controller", "hmac-sha256", SECRET)
    assert SECRET not in repr(key)  # a key that is logged shows no secret


@pytest.mark.parametrize(("text", "says"), [
    ("", "expected one TSIG key in BIND's format"),
    (KEY + KEY.replace("acme-controller", "other"), "found 2"),
    (KEY.replace("hmac-sha256", "hmac-sha999"), "the algorithm must be one of"),
    (KEY.replace(f'secret "{SECRET}";', ""), "no secret"),
    (KEY.replace(SECRET, SECRET[:-2] + "!!"), "no secret"),
    (KEY.replace(SECRET, "abc"), "the secret is not base64"),
])
def test_a_bad_tsig_key_file_is_named_and_its_secret_is_not_shown(
        tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "tsig.key"
    path.write_text(text)
    with pytest.raises(ValueError, match=says) as caught:
        read_tsig_key(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert says in str(caught.value)
    assert SECRET[:8] not in str(caught.value)


def test_credentials_are_name_value_lines(tmp_path: Path) -> None:
    path = tmp_path / "cloudflare.env"
    path.write_text("# the API token\nauth_token = s3cr3t=with=equals\n\nAUTH-USERNAME=me\n")
    assert read_credentials(path) == {"auth_token": "s3cr3t=with=equals", "auth_username": "me"}


@pytest.mark.parametrize("line", ["s3cr3t-token", "auth token=s3cr3t-token", "=s3cr3t-token",
                                  "auth_token="])
def test_a_bad_credentials_line_is_named_without_its_value(tmp_path: Path, line: str) -> None:
    path = tmp_path / "creds"
    path.write_text(f"# comment\n{line}\n")
    with pytest.raises(ValueError, match="expected name=value") as caught:
        read_credentials(path)
    assert str(caught.value).startswith(f"{path} line 2: expected name=value")
    assert "s3cr3t" not in str(caught.value)


def test_a_provider_s_error_loses_the_credentials() -> None:
    assert redact("401 for https://api.test/?key=abcd1234&user=me", ["abcd1234", "me"]) == \
        "401 for https://api.test/?key=***&user=me"  # (too short to be told from text)
    # a real lexicon provider whose error carries a credential (its URL, refused on loopback)
    lexicon = Lexicon("powerdns", {"auth_token": "tok-123456",
                                   "pdns_server": "http://127.0.0.1:9/tok-123456"})
    with pytest.raises(DnsError) as caught:
        lexicon.add_txt("example.com", "_acme-challenge.example.com", "v")
    assert str(caught.value).startswith("adding TXT _acme-challenge.example.com in zone "
                                        "example.com through lexicon powerdns: ")
    assert "127.0.0.1" in str(caught.value)  # the provider's own words are kept ...
    assert "tok-123456" not in str(caught.value)  # ... without the credential


def test_the_zone_is_the_longest_that_holds_the_name() -> None:
    zones = ("example.com", "shop.example.com")
    assert zone_in("_acme-challenge.shop.example.com", zones) == "shop.example.com"
    assert zone_in("_acme-challenge.example.com", zones) == "example.com"
    assert zone_in("_acme-challenge.example.org", zones) is None
    assert zone_in("_acme-challenge.myshop.example.com", ("shop.example.com",)) is None


# -- the propagation check ------------------------------------------------------------------


class FakeProvider:
    """Two authoritative servers; records written and removed are remembered."""

    description = "fake"

    def __init__(self) -> None:
        self.written: list[tuple[str, str]] = []
        self.removed: list[tuple[str, str]] = []

    def zone_for(self, fqdn: str) -> str:
        return "shop.test"

    def add_txt(self, zone: str, fqdn: str, value: str) -> None:
        self.written.append((fqdn, value))

    def remove_txt(self, zone: str, fqdn: str, value: str) -> None:
        self.removed.append((fqdn, value))
        raise DnsError("the server is away")

    def authoritative(self, zone: str) -> list[tuple[str, int]]:
        return [("192.0.2.1", 53), ("192.0.2.2", 53)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_check_waits_for_every_authoritative_server_and_is_bounded() -> None:
    clock = Clock()
    looks: list[tuple[str, float]] = []

    def lookup(server: tuple[str, int], fqdn: str) -> set[str]:
        looks.append((server[0], clock.now))
        # the second server (a secondary) gets the record 3 s late
        return {"v"} if server[0] == "192.0.2.1" or clock.now >= 3 else {"old"}

    dns01 = Dns01(FakeProvider(), 10, lookup=lookup, sleep=clock.sleep, clock=clock)
    record = dns01.present("*.shop.test", "_acme-challenge.shop.test", "v")
    dns01.wait_visible([record])
    assert clock.now == 3  # not before the second server showed it
    assert [s for s, _ in looks].count("192.0.2.1") == 1  # seen once is enough

    never = Dns01(FakeProvider(), 10, lookup=lambda s, f: set(), sleep=clock.sleep, clock=clock)
    clock.now = 0
    with pytest.raises(DnsError) as caught:
        never.wait_visible([Record("*.shop.test", "shop.test", "_acme-challenge.shop.test",
                                   "v")])
    assert str(caught.value) == (
        "DNS-01 for *.shop.test: TXT _acme-challenge.shop.test not seen at 192.0.2.1:53 within "
        "10s (it answered: 0 other TXT value(s)); --acme-dns-propagation-timeout")
    assert clock.now == 10  # bounded


def test_a_record_that_cannot_be_removed_is_logged_and_the_order_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    provider = FakeProvider()
    Dns01(provider, 1).remove([Record("*.shop.test", "shop.test", "_acme-challenge.shop.test",
                                      "v")])
    assert provider.removed == [("_acme-challenge.shop.test", "v")]
    assert "acme_dns_record_not_removed host=*.shop.test" in caplog.text


# -- settings that go together ----------------------------------------------------------------


def settings_of(*argv: str) -> controller_settings.ControllerSettings:
    parser = argparse.ArgumentParser()
    controller_settings.add_arguments(parser)
    return controller_settings.from_sources(parser.parse_args(list(argv)), environ={})


@pytest.mark.parametrize(("argv", "says"), [
    (["--acme-challenge", "dns-01"], "--acme-challenge dns-01 needs --acme-dns-provider"),
    (["--acme-dns-server", "ns1.example.com"], "--acme-dns-server needs --acme-dns-provider"),
    (["--acme-dns-provider", "rfc2136"], "rfc2136 needs --acme-dns-server"),
    (["--acme-dns-provider", "lexicon:cloudflare", "--acme-dns-tsig-key-file", "k"],
     "--acme-dns-tsig-key-file is for rfc2136"),
    (["--acme-dns-provider", "rfc2136", "--acme-dns-server", "10.0.0.53",
      "--acme-dns-credentials-file", "c"], "--acme-dns-credentials-file is for lexicon"),
    (["--acme-dns-provider", "rfc2136", "--acme-dns-server", "10.0.0.53",
      "--acme-dns-tsig-key-file", "/nonexistent/tsig.key"],
     "/nonexistent/tsig.key: cannot read the TSIG key"),
    (["--acme-dns-provider", "lexicon:nosuchprovider"],
     "--acme-dns-provider lexicon:nosuchprovider: ProviderNotAvailableError"),
])
def test_dns_settings_that_do_not_go_together_stop_the_start(argv: list[str], says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        _dns01(settings_of(*argv))
    assert says in str(caught.value)


@pytest.mark.parametrize(("argv", "says"), [
    (["--acme-dns-provider", "route53"], "is not rfc2136 or lexicon:NAME"),
    (["--acme-dns-provider", "lexicon:"], "is not rfc2136 or lexicon:NAME"),
    (["--acme-challenge", "tls-alpn-01"], "is not http-01 or dns-01"),
    (["--acme-dns-zone", "a b.example.com"], "expected DNS zone names"),
])
def test_bad_dns_values_are_refused_naming_the_flag(argv: list[str], says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_of(*argv)
    assert str(caught.value).startswith(argv[0] + ": ")
    assert says in str(caught.value)


def test_dns_settings_from_gateway_variables() -> None:
    parser = argparse.ArgumentParser()
    controller_settings.add_arguments(parser)
    s = controller_settings.from_sources(parser.parse_args([]), environ={
        "GATEWAY_ACME_DNS_PROVIDER": "rfc2136", "GATEWAY_ACME_DNS_SERVER": "10.0.0.53",
        "GATEWAY_ACME_DNS_ZONE": "shop.example.com.,example.com",
        "GATEWAY_ACME_CHALLENGE": "dns-01"})
    assert (s.acme_dns_provider, str(s.acme_dns_server), s.acme_dns_zone, s.acme_challenge) == (
        "rfc2136", "10.0.0.53:53", ("shop.example.com", "example.com"), "dns-01")
    dns01 = _dns01(s)
    assert dns01 is not None
    assert dns01.description == "RFC 2136 at 10.0.0.53:53"
