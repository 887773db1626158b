"""Settings: defaults need nothing; environment and TOML override; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, DicomPeer, load_settings


def test_defaults_need_no_configuration() -> None:
    settings = load_settings({})
    assert settings.host == "127.0.0.1" and settings.port == 8042 and settings.dicom_port == 11112
    assert settings.ae_title == "TESSERA" and settings.data_dir == Path("tessera-data")
    assert settings.effective_database_url.startswith(
        "sqlite:///"
    ) and settings.effective_database_url.endswith("tessera-data/index.sqlite3")


def test_environment_overrides() -> None:
    settings = load_settings(
        {
            "TESSERA_DATA_DIR": "/srv/tessera",
            "TESSERA_DATABASE_URL": "postgresql://db/tessera",
            "TESSERA_PORT": "9000",
            "TESSERA_DICOM_ENABLED": "off",
            "TESSERA_DICOM_PEERS": "PACS1@127.0.0.1:11113,CART2@10.0.0.5:104",
        }
    )
    assert settings.data_dir == Path("/srv/tessera") and settings.port == 9000 and not settings.dicom_enabled
    assert settings.effective_database_url == "postgresql://db/tessera"
    assert settings.dicom_peers == (
        DicomPeer("PACS1", "127.0.0.1", 11113),
        DicomPeer("CART2", "10.0.0.5", 104),
    )


def test_toml_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "tessera.toml"
    config.write_text(
        '[tessera]\nport = 9100\nae_title = "RADIOLOGY"\ndicom_peers = ["PACS@pacs.local:104"]\n'
    )
    settings = load_settings({"TESSERA_CONFIG": str(config), "TESSERA_PORT": "9200"})
    assert settings.port == 9200 and settings.ae_title == "RADIOLOGY"
    assert settings.dicom_peers == (DicomPeer("PACS", "pacs.local", 104),)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TESSERA_PORT": "x"}, "setting port"),
        ({"TESSERA_DICOM_ENABLED": "perhaps"}, "setting dicom_enabled"),
        ({"TESSERA_DICOM_PEERS": "PACS1"}, "AE@host:port"),
        ({"TESSERA_AE_TITLE": "A" * 17}, "ae_title"),
        ({"TESSERA_DUPLICATE_POLICY": "merge"}, "duplicate_policy"),
        ({"TESSERA_CONFIG": "/nonexistent/tessera.toml"}, "config file"),
    ],
)
def test_bad_values_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ)


def test_unknown_toml_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[tessera]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings({"TESSERA_CONFIG": str(config)})
