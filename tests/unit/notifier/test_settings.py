import pytest
from pydantic import ValidationError

from pj_notifier.settings import NotifierSettings


def test_the_slack_token_never_goes_over_plain_http_outside_dev() -> None:
    with pytest.raises(ValidationError, match="PJ_SLACK_API_URL must be an https:// URL"):
        NotifierSettings(env="prod", slack_api_url="http://127.0.0.1:9/api")
    assert NotifierSettings(env="prod", slack_api_url="http://127.0.0.1:9/api", connector_allow_http=True)
    assert NotifierSettings(env="dev", slack_api_url="http://127.0.0.1:9/api")
    assert NotifierSettings(env="prod").slack_api_url == "https://slack.com/api"
    with pytest.raises(ValidationError):
        NotifierSettings(env="dev", slack_api_url="ftp://slack.example.com/api")
