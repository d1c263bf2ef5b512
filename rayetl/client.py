"""A small HTTP client of the rayetl API, for the CLI."""

from typing import Any

import httpx

from rayetl.errors import RayetlError
from rayetl.settings import Settings

__all__ = ["ApiClient", "ApiError"]


class ApiError(RayetlError):
    """The API answered with an error, or could not be reached."""


class ApiClient:
    """Calls the API at settings.api_host:api_port with the configured token."""

    def __init__(self, settings: Settings, *, timeout_s: float = 60):
        headers = {}
        if settings.api_token is not None:
            headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
        self.base_url = f"http://{settings.api_host}:{settings.api_port}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; ApiError with the API's own message on a 4xx/5xx answer."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ApiError(
                f"the rayetl API is not running at {self.base_url}: start it with `rayetl up`"
            ) from None
        if response.status_code >= 400:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise ApiError(f"HTTP {response.status_code}: {message}")
        return response

    def get(self, path: str, **params: Any) -> Any:
        """GET path and return the JSON body."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: Any = None) -> Any:
        """POST JSON and return the JSON body."""
        return self.request("POST", path, json=body).json()
