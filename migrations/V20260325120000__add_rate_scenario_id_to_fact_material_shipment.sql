-- Legacy version 20260325120000 (dbmate): the rate-model scenario a shipment was costed with.

ALTER TABLE fact_material_shipment ADD COLUMN rate_scenario_id VARCHAR(24);

COMMENT ON COLUMN fact_material_shipment.rate_scenario_id IS 'Scenario _id (24-char hex) from JobsiteMaterial.scenarios when the shipment is costed via the rate-model scenario system. NULL for legacy cost types.';
