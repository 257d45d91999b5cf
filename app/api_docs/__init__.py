"""The API's descriptions: the OpenAPI document completed with what Litestar cannot infer
(security, problem responses, the event stream), the AsyncAPI document of the event catalogue, and
the docs UI served from the package (`/schema`)."""
