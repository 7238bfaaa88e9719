// The API description next to this page (relative, so it works behind a path prefix); no
// validator badge (it would load an image from another site): everything comes from here.
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
  tryItOutEnabled: false,
  persistAuthorization: false,
});
