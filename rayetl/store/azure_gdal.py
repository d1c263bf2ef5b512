"""GDAL's /vsiaz/ options for an Azure container, from the credentials adlfs holds for it.

rasterio and pyogrio read Azure blobs in place through GDAL's /vsiaz/ (byte ranges, no download);
GDAL takes its credentials from configuration options, not from adlfs.
"""

from fsspec import AbstractFileSystem

from rayetl.errors import InvalidRequest

__all__ = ["azure_gdal_env"]


def azure_gdal_env(fs: AbstractFileSystem, *, container: str) -> dict[str, str]:
    """GDAL's /vsiaz/ configuration options for the credentials adlfs was given (or found in env)."""
    if fs.connection_string:
        # GDAL reads AccountName, AccountKey or SharedAccessSignature and BlobEndpoint (Azurite,
        # custom domains) from it.
        return {"AZURE_STORAGE_CONNECTION_STRING": fs.connection_string}
    if not fs.account_name:
        raise InvalidRequest(
            f"container {container!r}: GDAL needs the storage account's name to read it. Set "
            "account_name or connection_string in RAYETL_STORAGE_OPTIONS['az']"
        )
    env = {"AZURE_STORAGE_ACCOUNT": fs.account_name}
    host = getattr(fs, "account_host", None)
    if host and fs.account_key:
        return {
            "AZURE_STORAGE_CONNECTION_STRING": (
                f"DefaultEndpointsProtocol=https;AccountName={fs.account_name};"
                f"AccountKey={fs.account_key};BlobEndpoint=https://{host}"
            )
        }
    if host:
        raise InvalidRequest(
            f"container {container!r}: GDAL reaches a custom account_host ({host}) only with an "
            "account key or a connection string. Set connection_string in RAYETL_STORAGE_OPTIONS['az']"
        )
    if fs.account_key:
        env["AZURE_STORAGE_ACCESS_KEY"] = fs.account_key
    elif fs.sas_token:
        env["AZURE_STORAGE_SAS_TOKEN"] = fs.sas_token.lstrip("?")
    elif fs.anon:
        env["AZURE_NO_SIGN_REQUEST"] = "YES"
    # Otherwise adlfs holds a credential object (service principal, DefaultAzureCredential) that
    # GDAL cannot take: with the account alone, GDAL uses its own chain (managed identity,
    # workload identity through AZURE_FEDERATED_TOKEN_FILE).
    return env
