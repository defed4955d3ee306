"""The route controller: resources from a source → validated models → IR → Envoy over ADS."""
