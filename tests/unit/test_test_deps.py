"""A Debian package the tests need and that is missing makes those tests skip,
the reason being the apt command that installs it (never a failure)."""

import pytest

from harness import need_program


def test_a_missing_program_skips_with_the_apt_command():
    with pytest.raises(pytest.skip.Exception) as skipped:
        need_program("fshipper-no-such-program", "fshipper-no-such-package")
    assert str(skipped.value) == ("fshipper-no-such-program is not installed: "
                                  "sudo apt-get install --no-install-recommends fshipper-no-such-package")


def test_a_present_program_is_found():
    assert need_program("sh", "dash").endswith("/sh")
