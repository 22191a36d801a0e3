// The API's reference page: Swagger UI drawing the OpenAPI document the API generates from its own
// request and response models. A file of its own, since the CSP forbids inline scripts.
(function () {
  "use strict";

  document.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("api-docs");
    if (!root || typeof SwaggerUIBundle === "undefined") return;
    window.crierApiDocs = SwaggerUIBundle({
      url: root.dataset.openapiUrl,
      domNode: root,
      presets: [SwaggerUIBundle.presets.apis],
      deepLinking: true,
      docExpansion: "list",
      defaultModelsExpandDepth: 0,
      displayRequestDuration: true,
      validatorUrl: null, // never send the document to a third-party validator
    });
  });
})();
